"""Grow a trained proxy into a deeper, wider one that computes exactly the same function.

    PYTHONPATH=. python -m eval.tiny.grow eval/tiny/model /tmp/grown/llada --depth 2 --ffn 2

Why: the shipped proxies plateau below the testbed's accuracy targets (issue 9), and a larger
model trained from scratch would first have to relearn what they took ~75 GPU-minutes to learn.
Growing keeps that: every original layer is followed by depth - 1 copies of itself whose output
projections (attention and FFN) are zero, so each copy adds nothing to the residual stream until
training moves it; the FFN gains (ffn - 1) x its hidden units, with random input rows and zero
output columns. The grown model's logits equal the source's (up to float rounding), and training
continues from there (`eval.tiny.train --init-from <grown dir>`, a fresh optimizer and LR warmup).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Names:
    """Where a family keeps what growing touches (parameter names inside a block, config keys)."""

    layers_key: str  # config field: number of layers
    ffn_key: str  # config field: FFN hidden size
    residual_outputs: tuple[str, ...]  # modules whose output is added to the residual stream
    ffn_inputs: tuple[str, ...]  # FFN input projections (rows = hidden units)
    ffn_output: str  # FFN output projection (columns = hidden units)


FAMILIES = {
    "llada": Names("n_layers", "mlp_hidden_size", ("attn_out", "ff_out"), ("ff_proj", "up_proj"), "ff_out"),
    "dream": Names("num_hidden_layers", "intermediate_size", ("o_proj", "down_proj"), ("gate_proj", "up_proj"), "down_proj"),
}
_BLOCK_KEY = re.compile(r"^(.*\.(?:blocks|layers)\.)(\d+)\.(.+)$")  # prefix, layer index, rest


def _module(rest: str) -> str:
    """'mlp.down_proj.weight' -> 'down_proj' (the module that owns the parameter)."""
    return rest.rsplit(".", 2)[-2]


def grow_state(
    state: dict[str, torch.Tensor], names: Names, n_layers: int, ffn_hidden: int, depth: int, ffn: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """New state dict (fp32) of the grown model: layer i -> layers i*depth .. i*depth + depth - 1.

    New FFN input rows are drawn with the standard deviation of the layer's existing rows (so the
    new units start at the scale training found), new FFN output columns are zero.
    """
    if depth < 1 or ffn < 1:
        raise ValueError(f"depth and ffn are growth factors >= 1, got depth={depth}, ffn={ffn}")
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        value = value.float()
        match = _BLOCK_KEY.match(key)
        if match is None:  # embeddings, final norm, LM head: unchanged
            out[key] = value.clone()
            continue
        prefix, index, rest = match.group(1), int(match.group(2)), match.group(3)
        if index >= n_layers:
            raise ValueError(f"{key}: layer {index} but the config has {n_layers} layers")
        module = _module(rest)
        if module in names.ffn_inputs and ffn > 1:  # (ffn_hidden, d) rows, or (ffn_hidden,) bias
            extra = (ffn - 1) * ffn_hidden
            if value.dim() == 2:
                new = torch.randn(extra, value.shape[1], generator=gen) * value.std()
            else:
                new = torch.zeros(extra)
            value = torch.cat([value, new], dim=0)
        if module == names.ffn_output and ffn > 1 and value.dim() == 2:  # (d, ffn_hidden) columns
            value = torch.cat([value, value.new_zeros(value.shape[0], (ffn - 1) * ffn_hidden)], dim=1)
        for copy in range(depth):
            grown = value.clone()
            if copy > 0 and module in names.residual_outputs:
                grown.zero_()  # the copy adds nothing to the residual stream until trained
            out[f"{prefix}{index * depth + copy}.{rest}"] = grown
    return out


def grow_model_dir(src: Path, dst: Path, depth: int, ffn: int, seed: int = 0, pack: bool | None = None) -> dict:
    """Read the exported model in `src` (packed shards too), write the grown one (bf16 shards, tokenizer,
    summary) to `dst`; `pack` as in train.export_model."""
    from transformers import AutoConfig

    import dllm_cache  # noqa: F401  (registers the model types with AutoConfig)

    from .tokenizer import load_or_build
    from .train import arch_of, export_model, model_class, read_weights

    config = AutoConfig.from_pretrained(src)
    arch = arch_of(config)
    names = FAMILIES[arch]
    n_layers, ffn_hidden = getattr(config, names.layers_key), getattr(config, names.ffn_key)
    if ffn_hidden is None:
        raise ValueError(f"{src}: config.{names.ffn_key} is unset; growing needs an explicit FFN size")
    state = read_weights(src)
    if not state:
        raise FileNotFoundError(f"{src}: no *.safetensors weights found")
    setattr(config, names.layers_key, n_layers * depth)
    setattr(config, names.ffn_key, ffn_hidden * ffn)
    model = model_class(arch)(config).float()
    model.load_state_dict(grow_state(state, names, n_layers, ffn_hidden, depth, ffn, seed), strict=True)
    summary_path = src / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["grown_from"] = {
        "path": str(src), "layers": n_layers, "ffn_hidden": ffn_hidden, "depth": depth, "ffn": ffn,
        "params_before": summary.get("params"), "tokens_before": summary.get("tokens"),
    }
    summary["params"] = sum(p.numel() for p in model.parameters())
    summary["config"] = {**summary.get("config", {}), names.layers_key: n_layers * depth, names.ffn_key: ffn_hidden * ffn}
    export_model(model, load_or_build(str(src)), dst, summary, pack=pack)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", type=Path, help="exported proxy model folder (config, weights, tokenizer)")
    p.add_argument("dst", type=Path, help="folder for the grown model")
    p.add_argument("--depth", type=int, default=2, help="layers per original layer")
    p.add_argument("--ffn", type=int, default=2, help="FFN hidden size factor")
    p.add_argument("--seed", type=int, default=0, help="seed of the new FFN input rows")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                   help="store the weights as *.safetensors.xz, as the shipped models are (default: when dst held packed ones)")
    args = p.parse_args(argv)
    summary = grow_model_dir(args.src, args.dst, args.depth, args.ffn, args.seed, pack=args.pack)
    print(f"[grow] {args.src} -> {args.dst}: {summary['params'] / 1e6:.2f} M params ({summary['grown_from']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
