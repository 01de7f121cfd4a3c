"""Where a proxy-model training step spends its time: ms per step, tokens/s and peak memory per
(architecture, task family, torch.compile), and the top GPU kernels of one eager step.

    PYTHONPATH=. python -m eval.tiny.train_profile --device cuda --out $OUT/train_profile.txt

Why: the first proxy runs trained at ~350k tokens/s per model on an H100, a few percent of its
matmul peak, so the token budget a session can afford is set by throughput, not by the model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from . import tasks, train
from .tokenizer import build_tokenizer


def _batch(maker: train.BatchMaker, family: str, device: str, start: int = 0) -> train.Batch:
    """The first batch of `family` at or after step `start` of the training stream."""
    step = start
    while True:
        b = maker.make(step)
        if b.family == family:
            return train.Batch(b.family, b.input_ids.to(device), b.attention_mask.to(device), b.response_len, b.step)
        step += 1


def time_steps(model, opt, batch: train.Batch, mask_id: int, shifted: bool, n: int, device: str) -> float:
    """Median seconds of one full training step (forward, backward, clip, AdamW) over n steps."""
    times = []
    on_cuda = device.startswith("cuda")
    for _ in range(n):
        if on_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda" if on_cuda else "cpu", dtype=torch.bfloat16, enabled=on_cuda):
            loss, _ = train.masked_diffusion_loss(model, batch, mask_id, shifted=shifted)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if on_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--archs", default="llada,dream")
    p.add_argument("--compile", default="off,on", help="comma list of off/on")
    p.add_argument("--steps", type=int, default=8, help="timed steps per case (after 3 warm-up steps)")
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--seq-len", type=int, default=4160)
    p.add_argument("--tiny-config", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    tok = build_tokenizer()
    maker = train.BatchMaker(tok, seed=tasks.TRAIN_SEED, seq_len=args.seq_len, batch_size=args.batch_size,
                             hotpot_frac=0.5, max_rows=512)
    batches = {"arith": _batch(maker, "arith", args.device), "hotpot-long": None, "hotpot-short": None}
    step = 0
    while batches["hotpot-long"] is None or batches["hotpot-short"] is None:  # one of each context regime
        b = _batch(maker, "hotpot", args.device, step)
        key = "hotpot-long" if b.input_ids.shape[1] > 1500 else "hotpot-short"
        batches[key] = batches[key] or b
        step = b.step + 1
    lines = [f"device {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}, torch {torch.__version__}"]
    for name, b in batches.items():
        lines.append(f"batch {name}: {tuple(b.input_ids.shape)} = {b.input_ids.numel():,} tokens, "
                     f"{int(b.attention_mask.sum()):,} real, R {b.response_len}")
    lines.append(f"{'arch':6s} {'compile':8s} {'batch':13s} {'ms/step':>9s} {'tok/s':>12s} {'peak GB':>8s}")
    for arch in args.archs.split(","):
        for compiled in args.compile.split(","):
            torch.manual_seed(0)
            model = train.model_class(arch)(train.model_config(tok, arch, tiny=args.tiny_config)).float().to(args.device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.device.startswith("cuda"))
            run_model = torch.compile(model, dynamic=True) if compiled == "on" else model
            for name, b in batches.items():
                try:
                    if args.device.startswith("cuda"):
                        torch.cuda.reset_peak_memory_stats()
                    t_compile = time.perf_counter()
                    time_steps(run_model, opt, b, tok.mask_token_id, arch == "dream", 3, args.device)  # warm-up
                    warm = time.perf_counter() - t_compile
                    sec = time_steps(run_model, opt, b, tok.mask_token_id, arch == "dream", args.steps, args.device)
                    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
                    lines.append(f"{arch:6s} {compiled:8s} {name:13s} {1e3 * sec:9.1f} {b.input_ids.numel() / sec:12,.0f} "
                                 f"{peak:8.1f}  (warm-up {warm:.1f} s)")
                except Exception as err:  # noqa: BLE001 - report and go on to the next case
                    lines.append(f"{arch:6s} {compiled:8s} {name:13s} FAILED {type(err).__name__}: {str(err)[:200]}")
                print(lines[-1], flush=True)
            if compiled == "off" and args.device.startswith("cuda"):
                from torch.profiler import ProfilerActivity, profile

                for name in ("arith", "hotpot-long"):
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        time_steps(model, opt, batches[name], tok.mask_token_id, arch == "dream", 1, args.device)
                    lines.append(f"--- {arch} eager {name}: top CUDA kernels")
                    lines.append(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
            del model, opt, run_model
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
