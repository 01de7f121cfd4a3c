"""The GPU's real peaks for the bench's roofline and weight-read floor: HBM bandwidth and bf16
GEMM throughput, measured on the device the bench runs on (or looked up by device name).

Why measure: the roofline used to assume an H100's 3.0 TB/s everywhere, so on an H200 (4.8 TB/s
on paper) every "measured / roofline" ratio was 1.6x too kind. A timed device copy and a timed
bf16 matmul take about a second and give what this GPU really reaches; the table holds vendor
figures (dense, no sparsity) for when measuring is not wanted (`--peaks table`). Both say which
they used (`Peaks.source`). On CPU there is nothing to measure: every value is None ("n/a").
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

# Vendor peaks by device-name substring, most specific first: (HBM TB/s, dense bf16 TFLOP/s).
DEVICE_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("GH200", 4.0, 989.0),  # before "H200", which its name contains
    ("H200", 4.8, 989.0),
    ("H100 PCIe", 2.0, 756.0),
    ("H100", 3.35, 989.0),  # SXM / HBM3
    ("H20", 4.0, 148.0),
    ("B200", 8.0, 2250.0),
    ("A100-SXM4-80GB", 2.039, 312.0),
    ("A100 80GB", 1.935, 312.0),
    ("A100", 1.555, 312.0),
    ("L40S", 0.864, 362.0),
    ("A10G", 0.6, 125.0),
)
PEAK_MODES = ("measure", "table")


@dataclass(frozen=True)
class Peaks:
    """HBM TB/s and bf16 TFLOP/s the roofline and the floor use, and where they came from."""

    tbps: float | None
    tflops: float | None
    source: str  # "measured: ...", "table: <entry>", "given", or "n/a (...)"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def floor_ms(self, weight_bytes: float) -> float | None:
        """Time to read `weight_bytes` once at this bandwidth (the one-step weight-read floor), ms."""
        return None if not self.tbps else 1e3 * weight_bytes / (self.tbps * 1e12)


def table_peaks(device_name: str) -> tuple[str, float, float] | None:
    """The DEVICE_PEAKS entry whose key occurs in `device_name` (first match), or None."""
    return next((e for e in DEVICE_PEAKS if e[0].lower() in device_name.lower()), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    """Fastest of `repeats` timed calls after two untimed ones (clocks and caches settle)."""
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_bandwidth(device: torch.device, nbytes: int = 2 << 30, repeats: int = 10) -> float:
    """Device-memory bandwidth, TB/s: a timed copy of `nbytes` (read + write counted, like STREAM's copy).

    2 GiB by default: far beyond any L2, so every byte goes to HBM. Works on any device (tests run it
    on CPU with a few MB); the bench only calls it on CUDA."""
    n = nbytes // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), device, repeats)
    return 2 * n * 2 / seconds / 1e12


def measure_gemm_tflops(device: torch.device, size: int = 8192, repeats: int = 10,
                        dtype: torch.dtype = torch.bfloat16) -> float:
    """Dense matmul throughput, TFLOP/s (multiply-add = 2): a timed (size x size) @ (size x size)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    seconds = _best_seconds(lambda: a @ b, device, repeats)
    return 2 * size**3 / seconds / 1e12


def learn_peaks(device: torch.device, mode: str = "measure", tbps: float | None = None,
                tflops: float | None = None) -> Peaks:
    """The peaks to use on `device`: given values win (both given: "given"); else measured
    (mode "measure") or looked up (mode "table"; an unknown name falls back to measuring).
    CPU: Peaks(None, None, "n/a ...")."""
    if mode not in PEAK_MODES:
        raise ValueError(f"peaks mode must be one of {PEAK_MODES}, got {mode!r}")
    if device.type != "cuda":
        return Peaks(None, None, "n/a (CPU: no roofline, nothing measured)")
    if tbps is not None and tflops is not None:
        return Peaks(tbps, tflops, "given")
    name = torch.cuda.get_device_name(device)
    entry = table_peaks(name) if mode == "table" else None
    if entry is not None:
        source = f"table: {entry[0]} ({name})"
        got_tbps, got_tflops = entry[1], entry[2]
    else:
        why = "" if mode == "measure" else f", {name!r} not in the table"
        got_tbps, got_tflops = measure_bandwidth(device), measure_gemm_tflops(device)
        source = f"measured on {name}: 2 GiB device copy, 8192^3 bf16 matmul{why}"
        torch.cuda.empty_cache()
    return Peaks(tbps if tbps is not None else got_tbps, tflops if tflops is not None else got_tflops,
                 source + ("; " + ", ".join(k for k, v in (("TB/s", tbps), ("TFLOP/s", tflops)) if v is not None)
                           + " given" if tbps is not None or tflops is not None else ""))
