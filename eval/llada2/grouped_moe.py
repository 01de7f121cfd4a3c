"""A bench-only MoE layer for LLaDA 2.x: every routed expert's weights stacked, one grouped matmul per projection.

The modelling code (dllm_cache.models.llada2.LLaDA2MoeSparseMoeBlock) loops over experts in Python with a
host sync per expert: faithful, but on a GPU it would time Python instead of the model. The bench swaps each
MoE layer's `mlp` for this one in EVERY row it times (reference loop and cached rows alike), so rows differ
only in what the cache skips. Same routing (the model's own LLaDA2MoeGate), same shared experts, same
arithmetic: the grouped forward equals the per-expert one up to float rounding (`from_block` + the --tiny
check in bench.py). `torch._grouped_mm` reads only the experts a step routes to; where it is missing or
refuses the inputs, a capacity-padded bmm over all experts stands in (it reads every expert's weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dllm_cache.models.llada2 import LLaDA2MoeConfig, LLaDA2MoeGate, LLaDA2MoeMLP, LLaDA2MoeSparseMoeBlock

PATH = {"grouped": "torch._grouped_mm", "padded": "capacity-padded bmm"}


class GroupedMoeBlock(nn.Module):
    """Router + stacked experts (gate_up (E, 2I, d), down (E, d, I): nn.Linear's (out, in) layout) + shared experts."""

    used = None  # which path ran last: a key of PATH (class-wide, for the bench's report)

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        E, d, inter = config.num_experts, config.hidden_size, config.moe_intermediate_size
        self.gate = LLaDA2MoeGate(config)
        self.gate_up = nn.Parameter(torch.empty(E, 2 * inter, d))
        self.down = nn.Parameter(torch.empty(E, d, inter))
        if config.num_shared_experts:
            self.shared_experts = LLaDA2MoeMLP(d, inter * config.num_shared_experts)

    @classmethod
    def from_block(cls, block: LLaDA2MoeSparseMoeBlock, config: LLaDA2MoeConfig) -> GroupedMoeBlock:
        """The same weights as a per-expert block (for the equality check)."""
        new = cls(config).to(next(block.parameters()).device, next(block.parameters()).dtype)
        with torch.no_grad():
            new.gate.load_state_dict(block.gate.state_dict())
            new.gate_up.copy_(torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in block.experts]))
            new.down.copy_(torch.stack([e.down_proj.weight for e in block.experts]))
            if hasattr(block, "shared_experts"):
                new.shared_experts.load_state_dict(block.shared_experts.state_dict())
        return new

    def _experts(self, xs: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        """xs (n, in) sorted by expert, w (E, out, in) -> (n, out): row j through its expert's weights."""
        if GroupedMoeBlock.used != "padded" and hasattr(torch, "_grouped_mm"):
            try:
                out = torch._grouped_mm(xs, w.transpose(-2, -1), offs=offs)
                GroupedMoeBlock.used = "grouped"
                return out
            except (RuntimeError, NotImplementedError, TypeError, ValueError):  # unsupported here: fall back for good
                GroupedMoeBlock.used = "padded"
        GroupedMoeBlock.used = "padded"
        E = w.shape[0]
        cap = int(counts.max())  # one host sync per projection
        expert = torch.repeat_interleave(torch.arange(E, device=xs.device), counts, output_size=xs.shape[0])
        slot = torch.arange(xs.shape[0], device=xs.device) - (offs.long() - counts)[expert]
        buf = xs.new_zeros(E, cap, xs.shape[1])
        buf[expert, slot] = xs
        return torch.bmm(buf, w.transpose(-2, -1))[expert, slot]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (T, d)
        chosen, weights = self.gate(flat)  # (T, k) each
        k = chosen.shape[1]
        e = chosen.flatten()
        order = e.argsort(stable=True)
        counts = torch.bincount(e, minlength=self.gate_up.shape[0])
        offs = counts.cumsum(0).to(torch.int32)
        token = order // k
        xs = flat[token]  # (T * k, d), grouped by expert
        g, u = self._experts(xs, self.gate_up, counts, offs).chunk(2, dim=-1)
        y = self._experts(F.silu(g) * u, self.down, counts, offs)  # (T * k, d)
        out = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
        out.index_add_(0, token, y.float() * weights.flatten()[order, None])
        out = out.to(x.dtype).reshape(x.shape)
        if hasattr(self, "shared_experts"):
            out = out + self.shared_experts(x)
        return out


def swap_in_grouped(model: nn.Module, copy_weights: bool) -> None:
    """Replace every MoE layer's `mlp` by a GroupedMoeBlock (with the same weights when copy_weights)."""
    config = model.config
    for layer in model.model.layers:
        if isinstance(layer.mlp, LLaDA2MoeSparseMoeBlock):
            layer.mlp = GroupedMoeBlock.from_block(layer.mlp, config) if copy_weights else GroupedMoeBlock(config)
