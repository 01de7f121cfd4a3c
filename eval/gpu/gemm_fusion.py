"""Would fusing the cached layer's projections pay? Times the partial step's GEMMs separately and
with concatenated weights (Q+K on the selected rows, gate+up on the selected rows), LLaDA-8B
shapes, bf16. GPU only.

    PYTHONPATH=. python -m eval.gpu.gemm_fusion --out eval/results/gemm_fusion.md
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from eval.gpu.timing import cuda_time_ms, emit

D, FFN = 4096, 12288  # LLaDA-8B d_model, mlp hidden


def time_us(fn, n: int = 20, reps: int = 10) -> float:
    """GPU time per call: n calls captured in one CUDA graph (no launch overhead), replayed."""
    return 1e3 * cuda_time_ms(fn, n, warmup=3, graph_reps=reps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, nargs="+", default=[64, 1024], help="selected rows (batch x k)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    lines = [f"GEMM us per layer ({torch.cuda.get_device_name()}, torch {torch.__version__}, bf16)", "",
             "| rows | Q and K separate | Q+K fused | gate and up separate | gate+up fused | saved per 32 layers |",
             "|---:|---:|---:|---:|---:|---:|"]
    wq, wk = torch.randn(D, D, **bf), torch.randn(D, D, **bf)
    wqk = torch.cat([wq, wk])
    wg, wu = torch.randn(FFN, D, **bf), torch.randn(FFN, D, **bf)
    wgu = torch.cat([wg, wu])
    for m in args.rows:
        x = torch.randn(m, D, **bf)
        qk_sep = time_us(lambda: (F.linear(x, wq), F.linear(x, wk)))  # noqa: B023
        qk_fus = time_us(lambda: F.linear(x, wqk))  # noqa: B023
        gu_sep = time_us(lambda: (F.linear(x, wg), F.linear(x, wu)))  # noqa: B023
        gu_fus = time_us(lambda: F.linear(x, wgu))  # noqa: B023
        saved_ms = 32 * (qk_sep - qk_fus + gu_sep - gu_fus) / 1e3
        lines.append(f"| {m} | {qk_sep:.1f} | {qk_fus:.1f} | {gu_sep:.1f} | {gu_fus:.1f} | {saved_ms:.2f} ms |")
    text = "\n".join(lines) + "\n"
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
