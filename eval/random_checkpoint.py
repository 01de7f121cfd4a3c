"""A random-weight LLaDA / Dream checkpoint in a real shape, with a byte-level tokenizer.

Why: no model weights can be downloaded here, but compute does not depend on weight values, so
`dllm-cache eval --compare` on such a checkpoint times the whole lm-eval pipeline (tokenising,
batching, sampler, cache) at the real shape; its scores are meaningless. The tokenizer has no
merges (one token per byte of UTF-8 text) and three specials, so every text round-trips and any
lm-eval task runs.

    python -m eval.random_checkpoint --shape llada-8b --out /tmp/llada8b      # ~16 GB in bf16
    dllm-cache eval --compare --model dllm_cache --tasks hotpotqa_long --limit 32 \
        --model_args pretrained=/tmp/llada8b,dtype=bfloat16,preset=llada-instruct-hotpotqa,batch_size=1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tests.helpers import SPECIALS, byte_tokenizer  # one definition with the tests (the product's tests may not import eval/)

SHAPES = ("llada-8b", "dream-7b", "tiny-llada", "tiny-dream")


def save(out: str | Path, shape: str, dtype: torch.dtype = torch.bfloat16, device: str | None = None) -> Path:
    """Write a random `shape` model (its real vocabulary size) and the byte tokenizer to `out`."""
    from dllm_cache.models.dream import DreamModel
    from dllm_cache.models.llada import LLaDAModelLM
    from dllm_cache.models.tiny import dream_7b_config, llada_8b_config, tiny_dream_config, tiny_llada_config

    tiny_vocab = len(SPECIALS) + 257  # room for the 256 bytes and the specials
    configs = {
        "llada-8b": (LLaDAModelLM, llada_8b_config),
        "dream-7b": (DreamModel, dream_7b_config),
        "tiny-llada": (LLaDAModelLM, lambda: tiny_llada_config(vocab_size=tiny_vocab, embedding_size=tiny_vocab)),
        "tiny-dream": (DreamModel, lambda: tiny_dream_config(vocab_size=tiny_vocab)),
    }
    if shape not in configs:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    tokenizer = byte_tokenizer()
    model_cls, make_config = configs[shape]
    config = make_config()
    config.mask_token_id, config.eos_token_id = tokenizer.mask_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    if hasattr(config, "bos_token_id"):
        config.bos_token_id = tokenizer.eos_token_id
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in `dtype`: an 8B model in fp32 would need 32 GB first
    try:
        with torch.device(device):
            model = model_cls(config).to(dtype)
    finally:
        torch.set_default_dtype(previous)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, required=True)
    parser.add_argument("--out", required=True, help="folder to write (config.json, safetensors, tokenizer)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    args = parser.parse_args(argv)
    path = save(args.out, args.shape, getattr(torch, args.dtype))
    print(f"random-weight {args.shape} checkpoint with a byte-level tokenizer written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
