"""Where one layer's cached K and V live: exact (the model's dtype) or fp8 with per-token scales.

Both stores look the same to the layer code (layer.py, block_cache.py):
- `write(start, k=..., v=..., index=...)` puts fresh K/V rows into the store;
- `k`, `v` are the full-precision (batch, kv_heads, seq, head_dim) tensors attention and V-verify
  read, valid for this layer after `load()`.

ExactKV (CacheConfig.kv_cache_dtype=None, the default) keeps K/V in the model's dtype: `k`/`v`
are the store itself, `load()` does nothing, writes are plain copies (the same ops as before the
store had a type, so the exact cache is unchanged bit for bit).

Fp8KV (kv_cache_dtype="fp8", opt-in and lossy) keeps K/V as float8_e4m3fn with one float32 scale
per (batch, kv_head, token): row absmax / 448, so each head's row uses fp8's whole range. That
is 1 byte per value plus 8 bytes per token and head, about half of bf16. Attention cannot read
fp8 directly (SDPA takes one dtype), so `load()` dequantizes the layer's K/V into a workspace
shared by every layer of the branch (one layer's K/V in the model's dtype, allocated once per
generation shape and overwritten in place: CUDA graphs and torch.compile see fixed buffers).
Every write quantizes into the store and puts the dequantized rows into the workspace too, so
the workspace always equals the dequantized store: attention and V-verify see exactly what later
steps will read back, fresh rows included (every read dequantizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn
SCALE_DTYPE = torch.float32
_TINY = torch.finfo(SCALE_DTYPE).tiny  # scale of an all-zero row (its values quantize to 0 either way)

# CacheConfig.kv_cache_dtype -> (stored value dtype, bytes per value, bytes of scale per token and head)
KV_CACHE_DTYPES = {"fp8": (FP8_DTYPE, 1, 4)}


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., head_dim) -> (float8_e4m3fn values (..., head_dim), float32 scales (..., 1)).

    scale = absmax of the row / 448 (at least float32's smallest normal, so all-zero rows give
    zeros, not NaN); values = x / scale, clamped to fp8's range against rounding past 448."""
    amax = x.abs().amax(dim=-1, keepdim=True).to(SCALE_DTYPE)
    scale = (amax / FP8_MAX).clamp_min(_TINY)
    q = (x.to(SCALE_DTYPE) / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of `quantize`, in `dtype`: q * scale, rounded once."""
    return (q.to(SCALE_DTYPE) * scale).to(dtype)


def dequantize_into(out: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> None:
    """out = dequantize(q, scale) in place, without a float32 temporary of out's size (fp8 values
    are exact in any wider float dtype; the product is computed in float32 and rounded once)."""
    out.copy_(q)
    out.mul_(scale)


def put(dst: torch.Tensor, start: int, src: torch.Tensor, index: torch.Tensor | None = None) -> None:
    """Write src (batch, heads, n, d) into rows of dst (batch, heads, seq, d), in place.

    index None: rows [start, start + n); (n,) int64: rows start + index[j] of every batch row;
    (batch, n) int64: rows start + index[b, j] of batch row b."""
    view = dst[:, :, start:]
    if index is None:
        view[:, :, : src.shape[2]].copy_(src)
    elif index.dim() == 1:
        view.index_copy_(2, index, src)
    else:
        view.scatter_(2, index[:, None, :, None].expand(-1, view.shape[1], -1, view.shape[-1]), src)


@dataclass
class ExactKV:
    """K/V in the model's dtype; (batch, kv_heads, seq, head_dim) each, RoPE applied to K."""

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def empty(cls, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> ExactKV:
        return cls(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))

    @property
    def shape(self) -> torch.Size:
        return self.k.shape

    @property
    def dtype(self) -> torch.dtype:
        """The dtype reads return (the model's)."""
        return self.k.dtype

    @property
    def device(self) -> torch.device:
        return self.k.device

    def matches(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> bool:
        """Whether this store already has this shape, dtype and device (a workspace is reused then)."""
        return tuple(self.k.shape) == tuple(shape) and self.k.dtype == dtype and self.k.device == torch.device(device)

    def load(self) -> None:
        """Make `k`/`v` this layer's (nothing to do: they are the store)."""

    def write(self, start: int, k: torch.Tensor | None = None, v: torch.Tensor | None = None,
              index: torch.Tensor | None = None) -> None:
        """Fresh K and/or V rows (batch, kv_heads, n, head_dim) into the store (see `put` for the rows)."""
        if k is not None:
            put(self.k, start, k, index)
        if v is not None:
            put(self.v, start, v, index)

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the store holds between steps (memory accounting, graph-pointer checks)."""
        return {"k": self.k, "v": self.v}


@dataclass
class Fp8KV:
    """K/V as float8_e4m3fn (batch, kv_heads, seq, head_dim) with float32 scales (batch, kv_heads, seq, 1);
    reads go through the shared `workspace`: one layer's K/V in the model's dtype (an ExactKV), shared by
    every fp8 layer store of a branch on one device."""

    k_q: torch.Tensor
    k_scale: torch.Tensor
    v_q: torch.Tensor
    v_scale: torch.Tensor
    workspace: ExactKV

    @classmethod
    def empty(cls, shape: tuple[int, ...], workspace: ExactKV) -> Fp8KV:
        device = workspace.k.device
        scale_shape = (*shape[:-1], 1)
        return cls(
            k_q=torch.empty(shape, dtype=FP8_DTYPE, device=device),
            k_scale=torch.empty(scale_shape, dtype=SCALE_DTYPE, device=device),
            v_q=torch.empty(shape, dtype=FP8_DTYPE, device=device),
            v_scale=torch.empty(scale_shape, dtype=SCALE_DTYPE, device=device),
            workspace=workspace,
        )

    @property
    def k(self) -> torch.Tensor:
        """Dequantized K of the layer last loaded (or written in full)."""
        return self.workspace.k

    @property
    def v(self) -> torch.Tensor:
        return self.workspace.v

    @property
    def shape(self) -> torch.Size:
        return self.k_q.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.workspace.k.dtype

    @property
    def device(self) -> torch.device:
        return self.k_q.device

    def load(self) -> None:
        """Dequantize this layer's K/V into the shared workspace, before a step reads any of it."""
        dequantize_into(self.workspace.k, self.k_q, self.k_scale)
        dequantize_into(self.workspace.v, self.v_q, self.v_scale)

    def write(self, start: int, k: torch.Tensor | None = None, v: torch.Tensor | None = None,
              index: torch.Tensor | None = None) -> None:
        """Quantize fresh rows into the store; the workspace gets their dequantized values."""
        if k is not None:
            self._write(self.k_q, self.k_scale, self.workspace.k, start, k, index)
        if v is not None:
            self._write(self.v_q, self.v_scale, self.workspace.v, start, v, index)

    @staticmethod
    def _write(values: torch.Tensor, scales: torch.Tensor, work: torch.Tensor, start: int, x: torch.Tensor,
               index: torch.Tensor | None) -> None:
        q, scale = quantize(x)
        # as bytes: scatter and index_copy have no float8 kernels (on CPU at least); a bit copy is the same
        put(values.view(torch.uint8), start, q.view(torch.uint8), index)
        put(scales, start, scale, index)
        put(work, start, dequantize(q, scale, work.dtype), index)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The layer's own tensors (the shared workspace is the branch's)."""
        return {"k": self.k_q, "k_scale": self.k_scale, "v": self.v_q, "v_scale": self.v_scale}


def kv_bytes_per_token_head(head_dim: int, dtype_bytes: int, kv_cache_dtype: str | None) -> int:
    """Bytes one token's K and V of one KV head cost in the store (scales included)."""
    if kv_cache_dtype is None:
        return 2 * head_dim * dtype_bytes
    _, value_bytes, scale_bytes = KV_CACHE_DTYPES[kv_cache_dtype]
    return 2 * (head_dim * value_bytes + scale_bytes)
