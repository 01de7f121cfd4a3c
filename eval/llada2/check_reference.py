"""Our LLaDA2MoeModelLM against the reference modelling code, on tiny random weights (fp32, CPU).

The reference is inclusionAI's `modeling_llada2_moe.py` + `configuration_llada2_moe.py` (HF-hub layout, as
vendored by ZHZisZZ/dllm), read from an ignored clone: put the two files in peers/llada2/ (git-ignored; never
committed). It was written for transformers 4.x; under transformers 5 three of its imports are gone, so
this script stands them in before importing it (and says so in its output):
- `transformers.modeling_attn_mask_utils._prepare_4d_causal_attention_mask[_for_sdpa]`: return the mask as
  given, i.e. the 4-D additive block mask the official `generate` builds reaches the attention unchanged
  (None stays None: bidirectional);
- `ROPE_INIT_FUNCTIONS["default"]`: transformers 4.x's default RoPE (inverse frequencies over
  int(head_dim * partial_rotary_factor) dims, attention scaling 1);
- `is_torch_fx_available`: False.

The weights of our tiny model are copied into the reference with a strict state-dict load (the module names
and state-dict keys must be identical), then logits are compared with the block-causal mask of the official
generate (additive, from `block_length`) and with no mask (bidirectional). Then the reference class goes
through our sampler and our cache (uncached, exact block cache, feature cache with refresh every step): its
tokens must equal our model's.

    python eval/llada2/check_reference.py            # prints the result; recorded in eval/results/llada2_reference_check.txt
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _shim_transformers() -> None:
    import transformers
    import transformers.modeling_rope_utils as rope_utils
    import transformers.utils.import_utils as import_utils

    if "transformers.modeling_attn_mask_utils" not in sys.modules:
        shim = types.ModuleType("transformers.modeling_attn_mask_utils")
        shim._prepare_4d_causal_attention_mask = lambda mask, *a, **k: mask
        shim._prepare_4d_causal_attention_mask_for_sdpa = lambda mask, *a, **k: mask
        sys.modules[shim.__name__] = shim
        transformers.modeling_attn_mask_utils = shim
    if "default" not in rope_utils.ROPE_INIT_FUNCTIONS:
        def default_rope(config, device=None, seq_len=None):
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
            exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
            return 1.0 / (config.rope_theta**exponent), 1.0

        rope_utils.ROPE_INIT_FUNCTIONS["default"] = default_rope
    if not hasattr(import_utils, "is_torch_fx_available"):
        import_utils.is_torch_fx_available = lambda: False


def load_reference(folder: Path):
    """The reference modelling module, imported as a package from `folder`."""
    _shim_transformers()
    pkg = types.ModuleType("llada2_reference")
    pkg.__path__ = [str(folder)]
    sys.modules["llada2_reference"] = pkg
    for name in ("configuration_llada2_moe", "modeling_llada2_moe"):
        spec = importlib.util.spec_from_file_location(f"llada2_reference.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["llada2_reference.modeling_llada2_moe"], sys.modules["llada2_reference.configuration_llada2_moe"]


def official_block_mask(total: int, block_length: int) -> torch.Tensor:
    """The official generate's mask: tril over blocks, repeated, log() -> 0 keep / -inf drop, (1, 1, T, T)."""
    n = total // block_length
    tri = torch.tril(torch.ones(n, n))
    return tri.repeat_interleave(block_length, 0).repeat_interleave(block_length, 1)[None, None].log()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=ROOT / "peers" / "llada2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.reference / "modeling_llada2_moe.py").exists():
        sys.exit(f"no reference at {args.reference}: put modeling_llada2_moe.py and configuration_llada2_moe.py there")

    from dllm_cache.models.tiny import tiny_llada2

    ref_modeling, ref_configuration = load_reference(args.reference)
    torch.manual_seed(args.seed)
    ours = tiny_llada2(seed=args.seed).float().eval()
    cfg = ours.config.to_dict()
    for key in ("architectures", "model_type", "transformers_version", "auto_map", "dtype", "torch_dtype"):
        cfg.pop(key, None)
    ref_config = ref_configuration.LLaDA2MoeConfig(**cfg)
    ref_config._attn_implementation = "eager"
    ref = ref_modeling.LLaDA2MoeModelLM(ref_config).float().eval()
    ref.load_state_dict(ours.state_dict(), strict=True)  # raises on any missing or unexpected key
    print("state dict: strict load of our keys into the reference: ok")

    block = 8
    ids = torch.randint(0, ours.config.vocab_size - 2, (2, 4 * block))
    ids[:, -5:] = ours.config.mask_token_id
    worst = 0.0
    with torch.no_grad():
        for name, ref_mask, our_kwargs in (
            ("block-causal (official 4-D additive mask)", official_block_mask(ids.shape[1], block),
             {"attention_mask": official_block_mask(ids.shape[1], block)}),
            ("block-causal (ours built from block_length)", official_block_mask(ids.shape[1], block), {"block_length": block}),
            ("bidirectional (no mask)", None, {}),
        ):
            pos = torch.arange(ids.shape[1])[None]
            ref_logits = ref(ids, attention_mask=ref_mask, position_ids=pos, use_cache=False).logits
            our_logits = ours(ids, **our_kwargs).logits
            diff = (ref_logits - our_logits).abs().max().item()
            worst = max(worst, diff)
            print(f"{name}: max |logit diff| = {diff:.3e} (logit scale {ref_logits.abs().max().item():.2f})")
    # The reference class through our sampler and our cache (the adapter reads its module names): same tokens.
    from dllm_cache import CacheConfig, cache_enabled, generate

    prompt = torch.randint(0, ours.config.vocab_size - 2, (2, 11))
    kw = dict(gen_length=24, block_length=block, steps=block, threshold=0.5, eos_id=[])
    with torch.no_grad():
        ours_tokens = generate(ours, prompt, **kw)
        same = {"reference class, uncached": torch.equal(generate(ref, prompt, **kw), ours_tokens)}
        configs = (("block cache", CacheConfig(policy="block-dual")), ("feature cache Kr 1", CacheConfig(response_interval=1)))
        for name, config in configs:
            with cache_enabled(ref, config):
                same[f"reference class, {name}"] = torch.equal(generate(ref, prompt, **kw), ours_tokens)
    for name, ok in same.items():
        print(f"generate() tokens, {name}: {'equal to ours' if ok else 'DIFFERENT from ours'}")
    worst = worst if all(same.values()) else float("inf")
    print(f"RESULT: {'PASS' if worst < 1e-4 else 'FAIL'} (max |diff| {worst:.3e}, tolerance 1e-4, fp32 CPU, "
          f"torch {torch.__version__}, shims: modeling_attn_mask_utils passthrough, default RoPE, no torch.fx)")


if __name__ == "__main__":
    main()
