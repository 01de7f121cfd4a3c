"""lm-eval model class `dllm_cache`: LLaDA / Dream diffusion LMs, with or without dLLM-Cache.

Registered with lm-eval as `--model dllm_cache` when this module is imported (`dllm-cache eval`
does that). Every constructor argument arrives from lm-eval's `--model_args` as a string or a value
lm-eval already parsed, so each one is converted here; every CacheConfig field is a model arg too,
read by the field's own type (`dllm_cache.config.parse_field`):

    dllm-cache eval --model dllm_cache --tasks gsm8k_local \
        --model_args pretrained=/ckpt/llada,dtype=bfloat16,gen_length=256,steps=256,block_length=32,cache=on

Data parallel: under `accelerate launch` (WORLD_SIZE > 1) each process holds a full model on
`cuda:{local_rank}` and lm-eval shards the requests by rank.

Request types:
- `generate_until`: batched, prompts left-padded, decoded by `dllm_cache.sampling.generate.generate`.
- `loglikelihood`: Monte-Carlo estimate of the masked-diffusion ELBO (LLaDA paper, eq. for
  conditional likelihood): mask k of the n continuation tokens (k drawn stratified over 1..n,
  positions uniform), score the masked tokens with cross entropy weighted by 1/t = n/k, average
  over `mc_num` draws. It is a lower bound on log p(continuation | context), which is what
  LLaDA uses to rank multiple-choice answers. `is_greedy` is one forward pass with the whole
  continuation masked: True when the argmax at every continuation position is the target token.
  Cost per request: ceil(mc_num / mc_batch_size) forwards + 1; scoring runs with the cache off
  (each draw is an independent forward, not a step of a denoising trajectory).
- `loglikelihood_rolling`: not defined for diffusion LMs here (raises NotImplementedError).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (fills the registry first: ours must not hide hf, dummy, ...)
import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from dllm_cache.config import CacheConfig, parse_field
from dllm_cache.sampling.generate import SAMPLERS
from dllm_cache.sampling.options import check_options, position_limit

from .presets import apply_preset
from .speed import SpeedMeter, TaskSpeed, merge_summaries

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", "none", ""}
SHIPPED = "SHIPPED"  # pretrained=SHIPPED: the small trained LLaDA installed with the package
CACHE_FIELDS = tuple(f.name for f in dataclasses.fields(CacheConfig))  # each one is also a model arg
_STAT_KEYS = ("steps", "full_steps", "response_refresh_steps", "partial_steps", "tokens_recomputed", "tokens_total")


# ----------------------------------------------------------------------------- argument parsing
def parse_bool(value: Any, name: str) -> bool:
    """Bool-like model arg: True/False, 1/0, "on"/"off", "yes"/"no", "true"/"false"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"model arg {name}={value!r} is not a boolean; use on/off, true/false or 1/0")


def parse_int(value: Any, name: str, *, minimum: int | None = None, optional: bool = False) -> int | None:
    """Integer model arg; with optional=True, None / "none" / "" give None."""
    if optional and (value is None or str(value).strip().lower() in ("none", "")):
        return None
    try:
        number = float(value) if not isinstance(value, int) else value
        if isinstance(value, bool) or number != int(number):
            raise ValueError
        result = int(number)
    except (TypeError, ValueError):
        raise ValueError(f"model arg {name}={value!r} is not an integer") from None
    if minimum is not None and result < minimum:
        raise ValueError(f"model arg {name}={result} must be >= {minimum}")
    return result


def parse_float(value: Any, name: str, *, optional: bool = False) -> float | None:
    """Float model arg; with optional=True, None / "none" / "" give None."""
    if optional and (value is None or str(value).strip().lower() in ("none", "")):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"model arg {name}={value!r} is not a number") from None


def parse_dtype(value: Any) -> torch.dtype | str:
    """"float32" | "bfloat16" | "float16" (also fp32/bf16/fp16, torch.* names) | "auto"."""
    if isinstance(value, torch.dtype):
        return value
    text = str(value).strip().lower().removeprefix("torch.")
    text = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}.get(
        text, text
    )
    if text == "auto":
        return "auto"
    if text not in _DTYPES:
        raise ValueError(f"model arg dtype={value!r} is not supported; use one of {sorted(_DTYPES)} or auto")
    return _DTYPES[text]


def batched(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def cut_at_stop_strings(text: str, until: Sequence[str]) -> str:
    """Cut `text` at the earliest stop string. Leading whitespace is kept but never cut on, so an
    answer that starts with a newline is not emptied by a "\\n\\n" stop."""
    body_start = len(text) - len(text.lstrip())
    cut = len(text)
    for stop in until:
        if stop:
            idx = text.find(stop, body_start)
            if idx != -1:
                cut = min(cut, idx)
    return text[:cut]


def _checkpoint_family(path: Any) -> str | None:
    """"dream" or "llada" from a checkpoint's config.json model_type; None when unreadable."""
    try:
        model_type = json.loads((Path(str(path)).expanduser() / "config.json").read_text())["model_type"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return "dream" if "dream" in str(model_type).lower() else "llada"


def model_arg_names() -> set[str]:
    """Every `--model_args` key the model takes: its constructor's own arguments and each CacheConfig field."""
    own = {name for name, p in inspect.signature(DLLMCacheLM.__init__).parameters.items()
           if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}
    return own | set(CACHE_FIELDS)


# ----------------------------------------------------------------------------- the model class
@register_model("dllm_cache")
class DLLMCacheLM(LM):
    """lm-eval wrapper around a local LLaDA or Dream checkpoint, optionally with dLLM-Cache.

    Args (all may be strings, as lm-eval passes them):
        pretrained: local checkpoint directory (config.json + safetensors + tokenizer files), or SHIPPED
            for the small trained LLaDA installed with the package.
        dtype: float32 | bfloat16 | float16 | auto.
        device: torch device; default cuda if available else cpu; ignored under data parallel.
        batch_size: prompts per generate call (and default MC rows per forward).
        gen_length, steps, block_length: diffusion decoding length, denoising steps, semi-AR block.
        temperature, cfg_scale: sampling temperature and classifier-free guidance scale.
        remasking: LLaDA's remasking rule (low_confidence | random; default low_confidence).
        alg: Dream's unmasking order (entropy | maskgit_plus | topk_margin | origin; default entropy).
        top_p: Dream's nucleus sampling threshold (None: off).
        threshold: optional confidence threshold for parallel decoding (None: fixed schedule).
        factor: Fast-dLLM's factor rule for parallel decoding instead (None: off).
        stop_at_eos: stop each answer once its end token is decoded with nothing masked before it.
        Options the model's family does not use (alg and top_p on LLaDA; cfg_scale and remasking
        on Dream) and unknown arguments are errors naming the valid ones.
        cache: on/off; when on, `dllm_cache.enable_cache` with a CacheConfig of the fields below.
        Every CacheConfig field (prompt_interval, response_interval, transfer_ratio, selection, policy,
            kv_cache_dtype, layer_ratios as 0.1:0.2:..., ...): its value, read by the field's type;
            `dllm-cache eval --help` lists them with their help. Used when cache is on.
        mc_num, mc_batch_size: Monte-Carlo draws per loglikelihood request, rows per forward.
        apply_chat_template: wrap each context as one user turn of the tokenizer's chat template.
        max_length: longest prompt + generation; default from the model config.
        stats_file: optional path; one JSON line of speed/cache stats is appended per
            generate_until call (and rank).
        preset: (lm-eval model args only) a named published setting from presets.py;
            explicit model args override it.

    Per task, wall time, generated tokens/s, forwards by step kind, the fraction recomputed and
    FLOPs are kept (speed.py) and reported in lm-eval's results (`get_model_info`).
    """

    def __init__(
        self,
        pretrained: str,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | str | None = None,
        gen_length: int | str = 256,
        steps: int | str | None = None,
        block_length: int | str | None = None,
        temperature: float | str = 0.0,
        cfg_scale: float | str = 0.0,
        remasking: str | None = None,
        alg: str | None = None,
        top_p: float | str | None = None,
        threshold: float | str | None = None,
        factor: float | str | None = None,
        stop_at_eos: bool | str = False,
        cache: bool | str = False,
        mc_num: int | str = 128,
        mc_batch_size: int | str | None = None,
        apply_chat_template: bool | str = False,
        max_length: int | str | None = None,
        stats_file: str | None = None,
        trust_remote_code: Any = None,  # accepted for CLI compatibility; our classes need no remote code
        **cache_fields: Any,  # CacheConfig fields by name (CACHE_FIELDS)
    ) -> None:
        super().__init__()
        unknown = sorted(set(cache_fields) - set(CACHE_FIELDS))
        if unknown:
            raise ValueError(f"unknown dllm_cache model arg(s) {unknown}; valid: {', '.join(sorted(model_arg_names()))}.")
        import transformers

        import dllm_cache  # registers our LLaDA / Dream classes with transformers' Auto classes
        from dllm_cache.sampling.generate import generate

        self._dllm_cache = dllm_cache
        self._generate = generate
        from dllm_cache.shipped import default_model_dir, ready_model_dir

        if str(pretrained) == SHIPPED:
            pretrained = default_model_dir()
        path = Path(str(pretrained)).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"model arg pretrained={pretrained!r} is not a local directory. dllm_cache loads "
                "checkpoints from disk only (no hub downloads): pass the folder holding config.json."
            )
        path = ready_model_dir(path)  # packed (*.safetensors.xz) weights: their unpacked copy in the user cache

        self.batch_size = self._parse_batch_size(batch_size)
        self.gen_length = parse_int(gen_length, "gen_length", minimum=1)
        self.steps = parse_int(steps, "steps", minimum=1, optional=True) or self.gen_length
        self.block_length = parse_int(block_length, "block_length", minimum=1, optional=True)
        self.temperature = parse_float(temperature, "temperature")
        self.cfg_scale = parse_float(cfg_scale, "cfg_scale")
        self.remasking = None if remasking is None else str(remasking)
        self.alg = None if alg is None else str(alg)
        self.top_p = parse_float(top_p, "top_p", optional=True)
        self.threshold = parse_float(threshold, "threshold", optional=True)
        self.cache_on = parse_bool(cache, "cache")
        self.mc_num = parse_int(mc_num, "mc_num", minimum=1)
        self.mc_batch_size = parse_int(mc_batch_size, "mc_batch_size", minimum=1, optional=True) or min(
            self.mc_num, max(self.batch_size, 32)
        )
        self._wrap_chat = parse_bool(apply_chat_template, "apply_chat_template")
        self._harness_chat = False  # set when lm-eval applies the chat template itself
        self.stats_file = str(stats_file) if stats_file else None

        # --- placement: one full replica per process under accelerate (data parallel)
        self.accelerator = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            try:
                from accelerate import Accelerator
            except ImportError as e:
                raise ImportError(
                    "WORLD_SIZE > 1 (launched by accelerate/torchrun) but the `accelerate` package is "
                    "not installed; `pip install accelerate` or run a single process."
                ) from e
            on_cpu = str(device or "").startswith("cpu") or not torch.cuda.is_available()
            self.accelerator = Accelerator(cpu=on_cpu)  # cpu=True: gloo data parallel (tests, no GPU)
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
            if self._world_size != int(os.environ["WORLD_SIZE"]):
                raise RuntimeError(
                    f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate set up {self._world_size} process(es) "
                    f"({self.accelerator.distributed_type}); every rank would evaluate every request. "
                    "Launch with `accelerate launch` / `torchrun` on one GPU per process."
                )
            self._device = torch.device(self.accelerator.device)
            if device and not str(device).startswith(("cuda", "cpu")):
                log.warning("data parallel: device=%s ignored, rank %d uses %s", device, self._rank, self._device)
        else:
            device = str(device) if device else ("cuda" if torch.cuda.is_available() else "cpu")
            if device.startswith("cuda") and not torch.cuda.is_available():
                log.warning("device=%s requested but CUDA is not available; using cpu", device)
                device = "cpu"
            self._device = torch.device(device)

        # --- model and tokenizer, from disk only
        self.model = transformers.AutoModel.from_pretrained(str(path), dtype=parse_dtype(dtype), local_files_only=True)
        self.model.to(self._device).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.config = self.model.config
        self.family = self._family()
        self.mask_id = self._config_id("mask_token_id")
        if self.mask_id is None:
            raise ValueError(f"{path}/config.json has no mask_token_id; a diffusion LM needs one")
        self.pad_id = self._pick_pad_id()
        # Options this family's sampler takes; a wrong-family or misspelled one fails here, not mid-run.
        self.factor = parse_float(factor, "factor", optional=True)
        self.stop_at_eos = parse_bool(stop_at_eos, "stop_at_eos")
        steps_asked = self.steps
        if self.family == "llada2":  # steps= counts over the answer, as for the other families and the CLI and server
            from dllm_cache.sampling.llada2 import llada2_generate, steps_per_block

            block = self.block_length or inspect.signature(llada2_generate).parameters["block_length"].default
            steps_asked = steps_per_block(self.steps, self.gen_length, block)
        self.sampler_options = check_options(self.family, dict(
            gen_length=self.gen_length, steps=steps_asked, block_length=self.block_length, temperature=self.temperature,
            cfg_scale=self.cfg_scale, remasking=self.remasking, alg=self.alg, threshold=self.threshold, mask_id=self.mask_id,
            top_p=self.top_p, factor=self.factor, stop_at_eos=self.stop_at_eos,
        ), SAMPLERS)
        self.stop_ids = self._collect_stop_ids()
        limit = parse_int(max_length, "max_length", minimum=2, optional=True)
        self.max_length = limit or int(position_limit(self.config) or 4096)

        if self.cache_on:
            self.cache_config = CacheConfig(**{name: parse_field(name, value) for name, value in cache_fields.items()})
            dllm_cache.enable_cache(self.model, self.cache_config)
        else:
            self.cache_config = None

        self.preset: str | None = None
        self.last_stats: dict[str, Any] = {}
        self.speed = SpeedMeter(self.model, self._cache_counters, self._sync, self._lm_head_all_rows())
        self._speed_all: dict[str, TaskSpeed] = {}
        log.info(
            "dllm_cache: %s (%s) on %s, rank %d/%d, cache=%s",
            path, self.family, self._device, self._rank, self._world_size, self.cache_config or "off",
        )

    # ------------------------------------------------------------------ construction from lm-eval
    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None):
        """As LM's, except that `--model_args` win over the CLI-wide settings: lm-eval's CLI always
        sends device (default cuda:0) and batch_size (default 1), which would otherwise clash
        with `device=` / `batch_size=` given in --model_args. `preset=NAME` expands to the
        preset's model args under the explicit ones (presets.py)."""
        arg_dict, preset = apply_preset(dict(arg_dict))
        if preset is not None:
            family = _checkpoint_family(arg_dict.get("pretrained"))
            if family is not None and family != preset.family:
                raise ValueError(
                    f"preset {preset.name!r} is for {preset.model} ({preset.family}), but "
                    f"{arg_dict.get('pretrained')} is a {family} model; pick a {family}-* preset"
                )
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's CLI sends --device (default cuda:0) whether or not the user chose it.
            print(f"[dllm_cache] CUDA is not available: running on cpu (lm-eval passed device={extra['device']})",
                  file=sys.stderr)
            extra["device"] = "cpu"
        valid = model_arg_names()
        unknown = sorted(set(arg_dict) - valid)
        if unknown:
            raise ValueError(f"unknown dllm_cache model arg(s) {unknown}; valid: {', '.join(sorted(valid))}.")
        lm = cls(**arg_dict, **{k: v for k, v in extra.items() if k in valid})
        if preset is not None:
            lm.preset = preset.name
            log.info("dllm_cache: preset %s (%s) -> %s; lm-eval settings of the source: %s",
                     preset.name, preset.source, preset.model_args, preset.lm_eval_args)
        return lm

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # ------------------------------------------------------------------ setup helpers
    @staticmethod
    def _parse_batch_size(value: Any) -> int:
        if isinstance(value, str) and value.strip().lower().startswith("auto"):
            log.warning("batch_size=%s: automatic batch sizing is not supported; using 1", value)
            return 1
        return parse_int(value, "batch_size", minimum=1)

    def _family(self) -> str:
        try:
            from dllm_cache.hooks import sampler_of

            return sampler_of(self.model)  # "llada" (LLaDA, LLaDA-MoE, MMaDA) or "dream": the sampler's family
        except Exception:  # noqa: BLE001 - fall back to the config's model_type
            model_type = str(getattr(self.config, "model_type", "")).lower()
            return "dream" if model_type == "dream" else "llada"

    def _config_id(self, key: str) -> int | None:
        value = getattr(self.config, key, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        return None if value is None else int(value)

    def _pick_pad_id(self) -> int:
        """Left-padding id: never the mask id (the sampler would treat pads as slots to fill)."""
        for candidate in (self.tokenizer.pad_token_id, self._config_id("pad_token_id"), self.tokenizer.eos_token_id,
                          self._config_id("eos_token_id")):
            if candidate is not None and candidate != self.mask_id:
                return int(candidate)
        return 0 if self.mask_id != 0 else 1

    def _collect_stop_ids(self) -> set[int]:
        """Token ids that end a generation: config/tokenizer EOS, chat end-of-turn, mask."""
        ids: set[int] = {self.mask_id}
        eos = getattr(self.config, "eos_token_id", None)
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        vocab = self.tokenizer.get_vocab()
        for token in ("<|eot_id|>", "<|im_end|>", "<|endoftext|>"):
            if token in vocab:
                ids.add(int(vocab[token]))
        return ids

    # ------------------------------------------------------------------ lm-eval plumbing
    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.pad_id)

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        self._harness_chat = True
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(tensor) if self.accelerator is not None else tensor

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self.accelerator is None:
            return [obj]
        out = [None] * self._world_size if self._rank == dst else None
        torch.distributed.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ tokenisation
    def _prompt_text(self, context: str) -> str:
        if self._wrap_chat:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": context}], tokenize=False, add_generation_prompt=True
            )
        return context

    def _encode(self, text: str) -> list[int]:
        # A chat template already holds BOS; otherwise let the tokenizer add its specials.
        add_special = not (self._wrap_chat or self._harness_chat)
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(batch, max_len) ids right-aligned with pad_id in front; mask None when no row is padded."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        ids = ids.to(self._device)
        return ids, (mask.to(self._device) if bool((mask == 0).any()) else None)

    def _decode_generated(self, ids: list[int]) -> str:
        for pos, tok in enumerate(ids):
            if tok in self.stop_ids:
                ids = ids[:pos]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ generation
    def _cache_stats(self) -> dict[str, float]:
        if not self.cache_on:
            return {}
        stats = self._dllm_cache.cache_stats(self.model)
        counters = {k: float(v) for k, v in stats.items() if isinstance(v, (int, float)) and k != "recompute_fraction"}
        return {**dict.fromkeys(_STAT_KEYS, 0.0), **counters}

    def _sync(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def _cache_counters(self) -> dict[str, float]:
        """cache_stats counters while the cache is on, else {} (read by the SpeedMeter)."""
        if not self._dllm_cache.is_cache_enabled(self.model):
            return {}
        return {k: v for k, v in self._dllm_cache.cache_stats(self.model).items() if isinstance(v, (int, float))}

    def _lm_head_all_rows(self) -> bool:
        """True when the cache cannot skip the prompt rows' logits (no separate head: weight tying)."""
        try:
            from dllm_cache.hooks import adapter_for

            return adapter_for(self.model).lm_head(self.model) is None
        except Exception:  # noqa: BLE001 - unknown family: count the head on every row
            return True

    def set_cache(self, on: bool) -> None:
        """Switch the cache on (with this model's cache_config) or off, e.g. for cached-vs-uncached
        comparisons on one loaded model (`dllm-cache eval --compare`)."""
        if on and self.cache_config is None:
            raise ValueError("set_cache(True) needs a cache_config: construct the model with cache=on")
        if on and not self._dllm_cache.is_cache_enabled(self.model):
            self._dllm_cache.enable_cache(self.model, self.cache_config)
        elif not on and self._dllm_cache.is_cache_enabled(self.model):
            self._dllm_cache.disable_cache(self.model)
        self.cache_on = bool(on)

    def reset_speed(self) -> None:
        self.speed.reset()
        self._speed_all = {}

    def _gather_speed(self) -> None:
        """Per-task speed of all ranks, kept for get_model_info (a collective: every rank calls it)."""
        gathered = self.gather_object(self.speed.tasks)
        if gathered is not None:
            self._speed_all = merge_summaries(gathered)

    def get_model_info(self) -> dict[str, Any]:
        """Added by lm-eval to results["config"]: the settings and the per-task speed record."""
        return {
            "dllm_cache": {
                "family": self.family,
                "preset": self.preset,
                "cache": self.cache_on,
                "cache_config": self._cache_config_dict() if self.cache_on else None,
                "sampler": {"gen_length": self.gen_length, "steps": self.steps, "block_length": self.block_length,
                            "temperature": self.temperature, "top_p": self.top_p, "cfg_scale": self.cfg_scale,
                            "remasking": self.remasking, "alg": self.alg, "threshold": self.threshold,
                            "factor": self.factor, "stop_at_eos": self.stop_at_eos},
                "batch_size": self.batch_size,
                "mc_num": self.mc_num,
            },
            "dllm_cache_speed": {task: record.summary() for task, record in self._speed_all.items()},
        }

    def _cache_config_dict(self) -> dict[str, Any]:
        """Every CacheConfig field, so a result file says exactly which cache made it."""
        return dataclasses.asdict(self.cache_config)

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        if not requests:
            return []
        wall0 = time.perf_counter()
        contexts = [req.args[0] for req in requests]
        kwargs = [dict(req.args[1] or {}) for req in requests]
        budget = self.max_length - self.gen_length
        if budget < 1:
            raise ValueError(
                f"gen_length={self.gen_length} leaves no room for a prompt in max_length={self.max_length}"
            )
        # An empty prompt (no BOS in this tokenizer) gets one pad token so the sampler has a prompt.
        prompts = [self._encode(self._prompt_text(ctx)) or [self.pad_id] for ctx in contexts]
        too_long = [len(ids) for ids in prompts if len(ids) > budget]
        if too_long:
            log.warning(
                "%d of %d prompts (up to %d tokens) left-truncated to %d tokens = max_length %d - gen_length %d",
                len(too_long), len(prompts), max(too_long), budget, self.max_length, self.gen_length,
            )
            prompts = [ids[-budget:] for ids in prompts]
        ignored = {k for kw in kwargs for k in kw} - {"until", "do_sample", "temperature", "max_gen_toks"}
        if ignored:
            log.info("dllm_cache: generation kwargs %s ignored; decoding is set by model args", sorted(ignored))

        tasks, chunks = self._batch_plan(requests, prompts)
        results: list[str | None] = [None] * len(requests)
        totals: dict[str, float] = dict.fromkeys(_STAT_KEYS, 0.0)
        gen_seconds, n_batches = 0.0, 0
        ratio = self.cache_config.transfer_ratio if self.cache_on else 0.0
        bar = tqdm(total=len(requests), desc=f"dllm_cache generate (rank {self._rank})",
                   disable=disable_tqdm or self._rank != 0)
        for chunk in chunks:
            with self.speed.track(tasks[chunk[0]], requests=len(chunk), response_len=self.gen_length,
                                  gen_tokens=len(chunk) * self.gen_length, transfer_ratio=ratio):
                input_ids, attention_mask = self._left_pad([prompts[i] for i in chunk])
                if self.cache_on:
                    self._dllm_cache.reset_cache(self.model)
                before = self._cache_stats()
                self._sync()
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = self._generate(
                        self.model, input_ids, attention_mask, **self.sampler_options,
                        progress=not disable_tqdm and self._rank == 0,  # a bar over the denoising steps
                    )  # (batch, prompt_len + gen_length)
                self._sync()
                gen_seconds += time.perf_counter() - t0
                n_batches += 1
                after = self._cache_stats()
                for key, value in after.items():
                    totals[key] = totals.get(key, 0.0) + value - before.get(key, 0.0)
                generated = out[:, input_ids.shape[1] :].tolist()
                for row, i in enumerate(chunk):
                    until = kwargs[i].get("until") or []
                    until = [until] if isinstance(until, str) else list(until)
                    text = cut_at_stop_strings(self._decode_generated(generated[row]), until)
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
            bar.update(len(chunk))
        bar.close()
        self._report(len(requests), n_batches, gen_seconds, time.perf_counter() - wall0, totals)
        self._gather_speed()
        return [r if r is not None else "" for r in results]

    def _batch_plan(self, requests: list, prompts: list[list[int]]) -> tuple[list[str], list[list[int]]]:
        """Each request's task name, and batches of request indices that never mix tasks (so
        speed is charged per task). Longest first within a task, and the task with the longest
        prompt first: similar lengths share a batch (little padding), and an out-of-memory
        error shows up on the first batch rather than the last."""
        tasks = [str(getattr(req, "task_name", None) or "unknown") for req in requests]
        longest: dict[str, int] = {}
        for i, task in enumerate(tasks):
            longest[task] = max(longest.get(task, 0), len(prompts[i]))
        order = sorted(range(len(requests)), key=lambda i: (-longest[tasks[i]], tasks[i], -len(prompts[i])))
        chunks = [list(group) for _, group in itertools.groupby(order, key=lambda i: tasks[i])]
        return tasks, [chunk for group in chunks for chunk in batched(group, self.batch_size)]

    def _report(self, n_requests: int, n_batches: int, gen_seconds: float, wall_seconds: float,
                totals: dict[str, float]) -> None:
        tokens = n_requests * self.gen_length
        stats: dict[str, Any] = {
            "rank": self._rank,
            "requests": n_requests,
            "batches": n_batches,
            "batch_size": self.batch_size,
            "gen_length": self.gen_length,
            "steps": self.steps,
            "block_length": self.block_length,
            "cache": self.cache_on,
            "generate_seconds": gen_seconds,
            "wall_seconds": wall_seconds,
            "tokens_per_second": tokens / gen_seconds if gen_seconds > 0 else float("nan"),
        }
        line = (
            f"[dllm_cache rank {self._rank}] {n_requests} requests, {n_batches} batches, "
            f"generate {gen_seconds:.2f}s (wall {wall_seconds:.2f}s), "
            f"{stats['tokens_per_second']:.1f} gen tok/s, cache={'on' if self.cache_on else 'off'}"
        )
        if self.cache_on:
            cfg = self.cache_config
            stats["cache_config"] = {
                "prompt_interval": cfg.prompt_interval,
                "response_interval": cfg.response_interval,
                "transfer_ratio": cfg.transfer_ratio,
            }
            stats["cache_stats"] = {k: int(v) for k, v in totals.items()}
            frac = totals["tokens_recomputed"] / totals["tokens_total"] if totals["tokens_total"] else float("nan")
            stats["recompute_fraction"] = frac
            line += (
                f" (Kp={cfg.prompt_interval} Kr={cfg.response_interval} ratio={cfg.transfer_ratio}): "
                f"steps={int(totals['steps'])} full={int(totals['full_steps'])} "
                f"prompt_refresh={int(totals.get('prompt_refresh_steps', 0))} "
                f"response_refresh={int(totals['response_refresh_steps'])} partial={int(totals['partial_steps'])}, "
                f"recomputed {frac:.1%} of response tokens on partial steps"
            )
        self.last_stats = stats
        print(line, flush=True)
        if self.stats_file:
            Path(self.stats_file).parent.mkdir(parents=True, exist_ok=True)
            with open(self.stats_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(stats) + "\n")

    # ------------------------------------------------------------------ likelihood
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation, split so that their concatenation is the
        tokenisation of the joined text (trailing context spaces move to the continuation)."""
        n_space = len(context) - len(context.rstrip())
        if n_space:
            continuation = context[-n_space:] + continuation
            context = context[:-n_space]
        context = self._prompt_text(context)
        whole = self._encode(context + continuation)
        prefix = self._encode(context)
        return whole[: len(prefix)], whole[len(prefix) :]

    def _forward(self, x: torch.Tensor):
        """The model's forward for scoring; LLaDA 2.x attends block-causally (blocks of block_length, 32 by
        default, aligned at column 0), as it decodes, through the 4-D mask its official generate passes."""
        if self.family != "llada2":
            return self.model(x)
        from dllm_cache.sampling.llada2 import block_mask

        mask = block_mask(x.shape[1], self.block_length or 32, None, next(self.model.parameters()).dtype, x.device)
        return self.model(x, attention_mask=mask)

    def _logits(self, x: torch.Tensor, prefix_len: int) -> torch.Tensor:
        """Logits (rows, seq, vocab) aligned so position i predicts token i (Dream is shifted)."""
        if self.cfg_scale > 0:
            uncond = x.clone()
            uncond[:, :prefix_len] = self.mask_id
            both = self._forward(torch.cat([x, uncond])).logits
            cond, unc = both.chunk(2)
            logits = unc + (self.cfg_scale + 1) * (cond - unc)
        else:
            logits = self._forward(x).logits
        if self.family == "dream":
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    def _mc_loglikelihood(self, prefix: list[int], target: list[int], seed: int) -> float:
        """-E_t[(1/t) * sum over masked continuation tokens of CE]: the ELBO of log p(target|prefix)."""
        n, p = len(target), len(prefix)
        gen = torch.Generator().manual_seed(seed)
        seq = torch.tensor(prefix + target, dtype=torch.long, device=self._device)  # (p + n,)
        tgt = seq[p:]
        total, done = 0.0, 0
        while done < self.mc_num:
            rows = min(self.mc_batch_size, self.mc_num - done)
            # stratified number of masked tokens per row, k in 1..n
            offset = torch.rand((), generator=gen)
            k = (((offset + torch.arange(rows)) / rows) * n).floor().long().clamp(0, n - 1) + 1  # (rows,)
            rank = torch.rand((rows, n), generator=gen).argsort(dim=1).argsort(dim=1)
            masked = (rank < k[:, None]).to(self._device)  # (rows, n): k True per row, uniform positions
            x = seq.expand(rows, -1).clone()
            x[:, p:][masked] = self.mask_id
            logits = self._logits(x, p)[:, p:].float()  # (rows, n, vocab)
            ce = F.cross_entropy(logits[masked], tgt.expand(rows, -1)[masked], reduction="none")
            weight = (n / k.to(self._device).float())[:, None].expand(rows, n)[masked]
            total += float((ce * weight).sum())
            done += rows
        return -total / self.mc_num

    def _is_greedy(self, prefix: list[int], target: list[int]) -> bool:
        p = len(prefix)
        x = torch.tensor([prefix + [self.mask_id] * len(target)], dtype=torch.long, device=self._device)
        pred = self._logits(x, p)[0, p:].argmax(dim=-1)
        return bool((pred == torch.tensor(target, device=self._device)).all())

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = []
        # The feature cache is built for the denoising loop; scoring uses plain forward passes.
        if self.cache_on:
            self._dllm_cache.disable_cache(self.model)
        try:
            for req in tqdm(requests, desc=f"dllm_cache loglikelihood (rank {self._rank})",
                            disable=disable_tqdm or self._rank != 0):
                context, continuation = req.args
                prefix, target = self._encode_pair(context, continuation)
                if not target:
                    out.append((0.0, True))
                    continue
                if len(target) >= self.max_length:
                    raise ValueError(
                        f"continuation of {len(target)} tokens does not fit max_length={self.max_length}"
                    )
                prefix = prefix[-(self.max_length - len(target)) :] if prefix else prefix
                seed = int.from_bytes(hashlib.sha256(f"{context}\x00{continuation}".encode()).digest()[:4], "little")
                task = str(getattr(req, "task_name", None) or "unknown")
                with self.speed.track(task, requests=1, response_len=len(target)), torch.inference_mode():
                    result = (self._mc_loglikelihood(prefix, target, seed), self._is_greedy(prefix, target))
                out.append(result)
                self.cache_hook.add_partial("loglikelihood", (context, continuation), result)
        finally:
            if self.cache_on:
                self._dllm_cache.enable_cache(self.model, self.cache_config)
        self._gather_speed()
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "dllm_cache: loglikelihood_rolling (perplexity tasks such as wikitext) is not supported. "
            "A masked diffusion LM has no left-to-right factorisation, so a rolling token-by-token "
            "likelihood is not defined; use generate_until tasks or loglikelihood (multiple-choice) tasks."
        )

