"""CPU de-risking of the kv-retrieval curriculum (`run.train`), before a device call spends minutes on it.

Two modes, both through the very training loop the GPU run uses (`run.train`, `run.kv_loss`, the
`Curriculum`), on the CPU in fp32:

    # learn: a from-scratch model of the LLaDA family (the proxy's config shrunk) goes through the gated
    # curriculum at short contexts; the JSON keeps the learning curve (step, records, loss, validation)
    nice -n 10 python -m eval.long_context.curriculum_probe learn --max-steps 2000 --out build/long_context/probe.json

    # time: seconds per training step of a real proxy at a few record counts (to estimate GPU steps)
    nice -n 10 python -m eval.long_context.curriculum_probe time --model eval/tiny/model --records 2 4 16 64

Why from scratch: the d384 proxy takes ~1 s a step on this machine's CPU, too slow to watch recall form
in minutes; a d128 model of the same family shows whether the loop and the objective get past the plateau
(loss ~0.5 = the digits' entropy) at 2-4 records. Results: eval/long_context/README.md, "Curriculum".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from eval.long_context import run, task

TOKENIZER = "eval/tiny/model"  # the proxies' closed vocabulary (2,000 pieces)


def scratch_llada(d_model: int, layers: int, heads: int, seed: int):
    """A freshly initialised LLaDA of the proxy's family (eval/tiny/model's config with the widths shrunk)."""
    from dllm_cache.models.llada import LLaDAConfig, LLaDAModelLM

    cfg = json.loads(Path(TOKENIZER, "config.json").read_text())
    keep = {k: cfg[k] for k in ("vocab_size", "embedding_size", "mask_token_id", "pad_token_id", "eos_token_id",
                                "rope_theta", "max_sequence_length", "rms_norm_eps", "block_type", "activation_type",
                                "layer_norm_type", "include_bias", "weight_tying")}
    torch.manual_seed(seed)
    return LLaDAModelLM(LLaDAConfig(d_model=d_model, n_layers=layers, n_heads=heads, n_kv_heads=heads,
                                    mlp_hidden_size=2 * d_model, **keep))


def learn(a: argparse.Namespace) -> dict:
    from eval.tiny.evaluate import load_model
    from eval.tiny.tokenizer import load_or_build

    torch.set_num_threads(a.threads)
    if a.model:
        model, tok = load_model(a.model, "cpu", torch.float32)
    else:
        model, tok = scratch_llada(a.d_model, a.layers, a.heads, a.seed), load_or_build(TOKENIZER)
    argv = ["--model", a.model or "scratch", "--name", "probe", "--out", "build/long_context/probe", "--device", "cpu",
            "--train-until", str(a.seconds), "--records", *map(str, a.records), "--stages", a.stages,
            "--lr", str(a.lr), "--warmup", str(a.warmup), "--batch-tokens", str(a.batch_tokens),
            "--value-weight", str(a.value_weight), "--val-steps", str(a.val_steps), "--max-steps", str(a.max_steps),
            "--stage-val-n", str(a.val_n),
            "--val-n", str(a.val_n), "--eval-batch", str(a.val_n), "--log-every", "25", "--final-after", "1.0", "--toy"]
    args = run.build_parser().parse_args(argv)
    meta: dict = {}
    t0 = time.time()
    run.train(model, tok, args, t0, "cpu", meta)
    n_params = sum(p.numel() for p in model.parameters())
    return {"mode": "learn", "model": a.model or f"scratch LLaDA d{a.d_model} x{a.layers} heads {a.heads} seed {a.seed}",
            "params": n_params, "threads": a.threads, "argv": argv, "seconds": round(time.time() - t0, 1), "training": meta}


def time_steps(a: argparse.Namespace) -> dict:
    """Seconds per optimizer step (forward + backward + AdamW) at each record count, rows as run.train picks
    them from --batch-tokens."""
    from eval.tiny.evaluate import load_model

    torch.set_num_threads(a.threads)
    model, tok = load_model(a.model, "cpu", torch.float32)
    model.train()
    vocab = task.Vocab(tok)
    args = run.build_parser().parse_args(["--model", a.model, "--name", "t", "--out", "/tmp",
                                          "--batch-tokens", str(a.batch_tokens)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)
    shifted = model.config.model_type.lower() == "dream"
    out = []
    for n_rec in a.records:
        length = len(vocab.head) + n_rec * task.RECORD_TOKENS + 13 + task.GEN["gen_length"]
        rows = max(args.min_rows, min(args.max_rows, args.batch_tokens // length))
        times = []
        for _ in range(a.steps + 1):  # the first step warms up allocations: not counted
            ids = task.train_batch(vocab, gen, rows, n_rec, task.GEN["gen_length"], "cpu")
            start = time.perf_counter()
            loss = run.kv_loss(model, ids, task.GEN["gen_length"], tok.mask_token_id, tok.eos_token_id, gen, shifted, 0.5, 4.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
        sec = sum(times[1:]) / a.steps
        out.append({"records": n_rec, "rows": rows, "tokens": rows * length, "seconds_per_step": round(sec, 3)})
        print(json.dumps(out[-1]), flush=True)
    return {"mode": "time", "model": a.model, "threads": a.threads, "steps": a.steps, "rows": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("mode", choices=("learn", "time"))
    p.add_argument("--out", type=Path, default=None, help="JSON summary (learn: the learning curve)")
    p.add_argument("--model", default=None, help="a proxy folder (learn: instead of a from-scratch model; time: required)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=1200.0, help="learn: wall-clock cap")
    p.add_argument("--stages", default="2-4", help="learn: curriculum stages before --records")
    p.add_argument("--records", type=int, nargs="+", default=None,
                   help="learn: the last stage's range (default 4 8); time: record counts to time (default 2 4 16 64)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--value-weight", type=float, default=4.0)
    p.add_argument("--max-steps", type=int, default=2000,
                   help="learn: steps (the LR schedule follows them: a shared CPU's speed varies)")
    p.add_argument("--val-steps", type=int, default=250, help="learn: steps between validations")
    p.add_argument("--val-n", type=int, default=48)
    p.add_argument("--steps", type=int, default=3, help="time: steps timed per record count")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if a.mode == "learn":
        a.records = a.records or [4, 8]
        if len(a.records) != 2:
            p.error(f"learn takes --records LO HI (the last stage), got {a.records}")
        result = learn(a)
    else:
        if not a.model:
            p.error("time needs --model (e.g. eval/tiny/model)")
        a.records = a.records or [2, 4, 16, 64]
        result = time_steps(a)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
