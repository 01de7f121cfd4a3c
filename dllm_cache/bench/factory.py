"""The models and prompts the bench runs: random-weight shapes (built on the device, initialised fast),
local checkpoints, the shapes of the workloads, and random prompts that avoid the special ids.

Used by the bench (runner.py) and by eval scripts that need the same models and prompts (eval/memory/run.py,
eval/peers/run.py, eval/gpu/profile_step.py, eval/real_rate/run.py).
"""

from __future__ import annotations

import argparse
import zlib
from dataclasses import dataclass
from typing import Any

import torch

from dllm_cache.analysis.flops import ModelDims

WORKLOADS: dict[str, dict[str, int]] = {
    "gsm8k": {"prompt_len": 700, "gen_len": 256, "steps": 256, "block_length": 32},
    "hotpotqa": {"prompt_len": 4000, "gen_len": 32, "steps": 32, "block_length": 32},
}
SHAPES = ("llada-8b", "dream-7b", "tiny-llada", "tiny-dream")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TASKS = ("gsm8k_local", "arith", "hotpot")


@dataclass(frozen=True)
class Workload:
    prompt_len: int
    gen_len: int
    steps: int
    block_length: int | None


# ----------------------------------------------------------------------------- model setup


def _config_for(args: argparse.Namespace) -> Any:
    """The config of the model to bench, without building it."""
    if args.model:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(args.model)
    return _shape_config(args.shape)


def _shape_config(shape: str) -> Any:
    from dllm_cache.models import tiny

    if shape == "llada-8b":
        return tiny.llada_8b_config()
    if shape == "dream-7b":
        return tiny.dream_7b_config()
    return (tiny.tiny_llada() if shape == "tiny-llada" else tiny.tiny_dream()).config


def _model_class(config: Any) -> type:
    if str(getattr(config, "model_type", "")).lower() == "llada":
        from dllm_cache.models.llada import LLaDAModelLM

        return LLaDAModelLM
    from dllm_cache.models.dream import DreamModel

    return DreamModel


@torch.no_grad()
def random_init_(model: torch.nn.Module, std: float, seed: int, by_name: bool = False) -> None:
    """Matrices ~ N(0, std), norm weights 1, biases 0, on the parameters' own device.

    by_name: each matrix from a generator seeded by (seed, its name), the scheme eval/peers/run.py
    gives the peers' model classes, so the bench and the peers' code hold identical weights."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            if by_name:
                gen.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            p.normal_(0.0, std, generator=gen)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Any:
    """The model to bench, in eval mode on `device` in `dtype`.

    `--model`: AutoModel works because importing dllm_cache registered LLaDA and Dream.
    """
    if args.model:
        from transformers import AutoModel

        from dllm_cache.shipped import ready_model_dir

        model = AutoModel.from_pretrained(ready_model_dir(args.model), dtype=dtype)  # packed shipped weights: their unpacked copy
        return model.to(device).eval()
    if args.shape in ("tiny-llada", "tiny-dream"):
        from dllm_cache.models import tiny

        build = tiny.tiny_llada if args.shape == "tiny-llada" else tiny.tiny_dream
        return build(seed=args.seed).to(device=device, dtype=dtype).eval()
    config = _shape_config(args.shape)
    if device.type != "cuda":
        raise SystemExit(
            f"--shape {args.shape} builds a multi-billion-parameter model; run it on a CUDA "
            "device (use --shape tiny-llada or tiny-dream on CPU)"
        )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        # Shapes only (meta), then uninitialised storage on the GPU, then our own fast init:
        # skips the model's own init, which would fill 8B parameters once more for nothing.
        with torch.device("meta"):
            model = _model_class(config)(config)
        if any(True for _ in model.buffers()):  # buffers would need their real values
            with torch.device(device):
                model = _model_class(config)(config)
        else:
            model = model.to_empty(device=device)
    finally:
        torch.set_default_dtype(previous)
    random_init_(model, args.init_std, args.seed, by_name=getattr(args, "init", "seeded") == "by-name")
    return model.to(dtype).eval()


def _special_ids(config: Any) -> set[int]:
    ids = set()
    for key in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def random_prompts(config: Any, batch: int, prompt_len: int, seed: int) -> torch.Tensor:
    """(batch, prompt_len) random token ids that avoid the mask/eos/pad ids."""
    vocab = ModelDims.from_config(config).vocab
    if getattr(config, "vocab_size", None):
        vocab = min(vocab, int(config.vocab_size))
    high = min(vocab, 32000)
    special = _special_ids(config)
    safe = next(i for i in range(high) if i not in special)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, high, (batch, prompt_len), generator=gen)
    for s in special:
        ids[ids == s] = safe
    return ids
