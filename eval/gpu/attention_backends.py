"""Which SDPA backend is fastest for the cached path's attention shapes (few selected queries
against every key), next to the uncached full-sequence shape. GPU only.

    PYTHONPATH=. python -m eval.gpu.attention_backends --out eval/results/attention_backends.md
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from eval.gpu.timing import cuda_time_ms, emit

# name -> (batch, heads, queries, keys); LLaDA-8B: 32 heads of 128
SHAPES = {
    "GSM8K b1 partial (64 of 956)": (1, 32, 64, 956),
    "GSM8K b16 partial": (16, 32, 64, 956),
    "GSM8K b1 response (256 of 956)": (1, 32, 256, 956),
    "GSM8K b1 full (956 of 956)": (1, 32, 956, 956),
    "HotpotQA b1 partial (8 of 4032)": (1, 32, 8, 4032),
    "HotpotQA b4 partial": (4, 32, 8, 4032),
    "HotpotQA b1 response (32 of 4032)": (1, 32, 32, 4032),
}
BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def time_us(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: int = 50) -> float:
    return 1e3 * cuda_time_ms(lambda: F.scaled_dot_product_attention(q, k, v), n, warmup=3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    lines = [f"SDPA per call, us (bf16, head_dim {args.head_dim}, {torch.cuda.get_device_name()}, torch {torch.__version__})",
             "", "| shape (batch, heads, q, k) | default | " + " | ".join(BACKENDS) + " | KV read at 3 TB/s |",
             "|---|" + "---:|" * (len(BACKENDS) + 2)]
    for name, (b, h, q, k) in SHAPES.items():
        qt = torch.randn(b, h, q, args.head_dim, device="cuda", dtype=torch.bfloat16)
        kt, vt = (torch.randn(b, h, k, args.head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        cells = [f"{time_us(qt, kt, vt):.1f}"]
        for backend in BACKENDS.values():
            try:
                with sdpa_kernel([backend]):
                    cells.append(f"{time_us(qt, kt, vt):.1f}")
            except RuntimeError:
                cells.append("n/a")
        kv_us = 2 * kt.numel() * 2 / 3e12 * 1e6
        lines.append(f"| {name} ({b}, {h}, {q}, {k}) | " + " | ".join(cells) + f" | {kv_us:.1f} |")
    text = "\n".join(lines) + "\n"
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
