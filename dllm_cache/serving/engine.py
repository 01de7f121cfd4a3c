"""The model side of the server: load a model once, turn a request into decoding settings, and run one
batch of requests as one cached generation, reporting each row's text block by block.

Blocks are reported without touching the sampler: a forward pre-hook on the model sees the sequence
(batch, P + gen) of every denoising step, and a semi-AR block with no mask token left is final (the
samplers never remask a committed token). So the text of block b reaches its client at the first
forward of block b + 1, and the last block when generate() returns. The same hook stops a batch
whose every client has gone (it raises; the cache's context managers undo themselves). LLaDA 2.x
(block diffusion) is called on the columns up to the current block uncached, and not at all cached (the
block-causal cache runs the layers itself): its text arrives when generate() returns, and a batch whose
clients have gone runs to its end when cached.

Everything here runs in the batcher's single worker thread: one generation at a time per model,
because a cache's state belongs to one generation (dllm_cache.engine.patch keeps it on the model).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from dllm_cache.config import CacheConfig

# Named cache settings a request may ask for (`"cache": "paper"`); "none" runs uncached.
CACHE_PRESETS: dict[str, CacheConfig | None] = {
    "default": CacheConfig(),
    "paper": CacheConfig(selection="paper"),
    "block-prefix": CacheConfig(policy="block-prefix"),
    "block-dual": CacheConfig(policy="block-dual"),
    "none": None,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RequestError(ValueError):
    """A request the model cannot serve as asked: a 400 naming `param`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


class Cancelled(RuntimeError):
    """Every client of the running batch has gone: the generation stops at the next forward."""


@dataclass(frozen=True)
class Defaults:
    """Decoding settings of requests that do not give their own. `steps` belong to `gen_length`;
    other lengths keep the same tokens per step."""

    gen_length: int = 64
    block_length: int = 8
    steps: int = 16
    threshold: float | None = None
    cache: str = "default"


@dataclass(frozen=True)
class Decoding:
    """One request's sampler settings. Requests with equal `batch_key()` share a generation."""

    gen_length: int
    steps: int
    block_length: int
    threshold: float | None
    temperature: float
    top_p: float | None
    cache: str
    seed: int | None
    alone: bool = False  # never share a batch (see Engine.decoding)

    def batch_key(self) -> tuple:
        # A seeded sampled request must see only its own random draws, so it never shares a batch
        # (id(self) is unique while the job lives); greedy decoding ignores the seed.
        if self.alone or (self.temperature > 0 and self.seed is not None):
            return ("alone", id(self))
        return (self.gen_length, self.steps, self.block_length, self.threshold, self.temperature, self.top_p, self.cache)


# emit(choice, new token ids, finish reason or None): called in the worker thread.
Emit = Callable[[int, list[int], "str | None"], None]


@dataclass(eq=False)
class Job:
    """One request in flight: its prompt, settings and `n` rows, and where its blocks go."""

    prompt_ids: list[int]
    decoding: Decoding
    max_tokens: int
    n: int
    emit: Emit
    fail: Callable[[BaseException], None]  # thread-safe: the batcher or a worker thread may call it
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class BatchReport:
    """What one generation did, for /metrics."""

    rows: int
    generated_tokens: int
    seconds: float
    cache_steps: dict[str, int] = field(default_factory=dict)
    cancelled: bool = False


class Engine:
    """A loaded model and tokenizer with the server's decoding defaults."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str, defaults: Defaults = Defaults(), max_n: int = 8,
                 exact_batching: bool = True):
        from dllm_cache.hooks import sampler_of
        from dllm_cache.sampling.options import position_limit

        if defaults.cache not in CACHE_PRESETS:
            raise ValueError(f"unknown cache preset {defaults.cache!r}; choose one of {', '.join(CACHE_PRESETS)}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.defaults = defaults
        self.max_n = max_n
        # Answers never depend on their neighbours: requests whose batched answer could (threshold
        # decoding with the feature cache) run one per batch. False batches them anyway, for throughput.
        self.exact_batching = exact_batching
        self.family = sampler_of(model)  # ValueError naming the supported families
        cfg = model.config
        self.mask_id = int(cfg.mask_token_id)
        self.pad_id = int(cfg.pad_token_id if cfg.pad_token_id is not None else 0)
        self.max_length = position_limit(cfg) or 1 << 30
        eos = getattr(cfg, "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos.append(int(tokenizer.eos_token_id))
        self.eos_ids = frozenset(eos)
        self.device = next(model.parameters()).device
        self._rate = defaults.gen_length / defaults.steps  # tokens per step of the defaults

    # ----- requests -> settings (event loop thread) -----------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_prompt(self, messages: list[dict]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(f"model {self.name!r} has no chat template (its tokenizer_config.json names none); "
                               "use /v1/completions with a plain prompt, or serve a model whose tokenizer has one",
                               param="messages")
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as err:  # noqa: BLE001  (a template that rejects these messages: the request's fault)
            raise RequestError(f"the chat template rejected these messages: {type(err).__name__}: {err}",
                               param="messages") from None

    def decoding(self, req, prompt_len: int) -> tuple[Decoding, int]:
        """(settings, max_tokens) of a validated request (protocol.SamplingFields); RequestError if
        this model cannot serve them."""
        d = self.defaults
        if req.n > self.max_n:
            raise RequestError(f"n={req.n} is more than this server returns per request ({self.max_n}, --max-n)", "n")
        max_tokens = req.max_tokens if req.max_tokens is not None else d.gen_length
        block = req.block_length or d.block_length
        gen_length = math.ceil(max_tokens / block) * block  # whole blocks; the answer is cut to max_tokens
        room = self.max_length - prompt_len
        if max_tokens > self.max_length - 1:
            raise RequestError(f"max_tokens={max_tokens} is beyond the model's length ({self.max_length} positions "
                               "for prompt and answer together)", "max_tokens")
        if gen_length > room:
            raise RequestError(f"the prompt ({prompt_len} tokens) and the answer ({gen_length} tokens, max_tokens "
                               f"rounded up to whole blocks of {block}) exceed the model's {self.max_length} positions; "
                               "shorten the prompt or lower max_tokens", "prompt")
        blocks = gen_length // block
        if req.steps is None:
            steps = max(blocks, round(gen_length / self._rate / blocks) * blocks)
        elif req.steps % blocks:
            raise RequestError(f"steps={req.steps} must be a multiple of the number of blocks ({gen_length} tokens / "
                               f"block_length {block} = {blocks})", "steps")
        else:
            steps = req.steps
        top_p = None if req.top_p in (None, 1, 1.0) else float(req.top_p)
        if top_p is not None and self.family not in ("dream", "llada2"):
            raise RequestError(f"top_p is not supported by the {self.family} sampler (it samples from the full "
                               "distribution); leave it out or set it to 1", "top_p")
        cache = d.cache if req.cache in (None, True) else "none" if req.cache is False else req.cache
        if cache not in CACHE_PRESETS:
            raise RequestError(f"cache={req.cache!r} is not a preset; use true, false or one of "
                               f"{', '.join(CACHE_PRESETS)}", "cache")
        threshold = d.threshold if req.threshold is None else float(req.threshold)
        temperature = float(req.temperature or 0.0)
        # Threshold decoding with the feature cache: a block lasts as many steps as its slowest row needs
        # and the refresh clock counts the batch's steps, so neighbours would move a row's refreshes.
        config = CACHE_PRESETS[cache]
        alone = self.exact_batching and threshold is not None and config is not None and not config.is_block
        return Decoding(gen_length, steps, block, threshold, temperature, top_p, cache, req.seed, alone), max_tokens

    # ----- one batch (worker thread) ---------------------------------------------------------------
    def run(self, jobs: list[Job]) -> BatchReport:
        """Generate every row of `jobs` (equal batch keys) at once, emitting each row's blocks as
        they complete. Rows are left padded; an answer does not depend on its neighbours."""
        from dllm_cache.engine.patch import cache_enabled, cache_stats
        from dllm_cache.sampling.generate import generate

        t0 = time.perf_counter()
        rows = [(job, c) for job in jobs for c in range(job.n)]
        d = jobs[0].decoding
        P = max(len(job.prompt_ids) for job in jobs)
        ids = torch.full((len(rows), P), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), P), dtype=torch.long)
        for r, (job, _) in enumerate(rows):
            n = len(job.prompt_ids)
            ids[r, P - n:] = torch.tensor(job.prompt_ids, dtype=torch.long)
            mask[r, P - n:] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        tracker = _RowTracker(self, rows, P, d.block_length)

        def pre_hook(_module, args, kwargs):
            x = args[0] if args else kwargs.get("input_ids")
            if x is not None and x.shape[1] == P + d.gen_length:
                tracker.update(x)
            if all(job.cancelled.is_set() for job in jobs):
                raise Cancelled("every client of this batch has gone")

        options = dict(gen_length=d.gen_length, steps=d.steps, block_length=d.block_length, threshold=d.threshold,
                       temperature=d.temperature, stop_at_eos=True)
        if self.family == "llada2":  # its sampler counts steps per block (a multiple of the blocks: see decoding)
            from dllm_cache.sampling.llada2 import steps_per_block

            options["steps"] = steps_per_block(d.steps, d.gen_length, d.block_length)
        if self.family in ("dream", "llada2") and d.top_p is not None:
            options["top_p"] = d.top_p
        if d.temperature > 0 and d.seed is not None:
            torch.manual_seed(d.seed)
        handle = self.model.register_forward_pre_hook(pre_hook, with_kwargs=True)
        report = BatchReport(rows=len(rows), generated_tokens=0, seconds=0.0)
        try:
            config = CACHE_PRESETS[d.cache]
            if config is None:
                out = generate(self.model, ids, mask, **options)
            else:
                with cache_enabled(self.model, config):
                    out = generate(self.model, ids, mask, **options)
                    stats = cache_stats(self.model)
                report.cache_steps = {k: int(stats[k]) for k in ("full_steps", "response_refresh_steps", "prompt_refresh_steps",
                                                                 "partial_steps", "block_steps") if k in stats}
            tracker.update(out, final=True)
        except Cancelled:
            report.cancelled = True
        finally:
            handle.remove()
        report.generated_tokens = tracker.generated
        report.seconds = time.perf_counter() - t0
        return report


class _RowTracker:
    """Per row: how many blocks were sent, and whether the row has finished (end token or max_tokens)."""

    def __init__(self, engine: Engine, rows: list[tuple[Job, int]], P: int, block: int):
        self.engine, self.rows, self.P, self.block = engine, rows, P, block
        self.sent = [0] * len(rows)  # tokens sent per row
        self.done = [False] * len(rows)
        self.generated = 0

    def update(self, x: torch.Tensor, final: bool = False) -> None:
        gen = x[:, self.P:]  # (rows, gen_length)
        nb = gen.shape[1] // self.block
        if final:
            complete = [nb] * len(self.rows)
        else:
            full = ~(gen.view(gen.shape[0], nb, self.block) == self.engine.mask_id).any(-1)  # (rows, blocks)
            # leading run of complete blocks per row: one host read per step
            complete = (full.long().cumprod(dim=1).sum(dim=1)).tolist()
        host = None
        for r, (job, choice) in enumerate(self.rows):
            if self.done[r] or complete[r] * self.block <= self.sent[r]:
                continue
            if host is None:
                host = gen.tolist()
            end = min(complete[r] * self.block, job.max_tokens)
            new = host[r][self.sent[r]:end]
            reason = None
            for i, tok in enumerate(new):
                if tok in self.engine.eos_ids:
                    new, reason = new[:i], "stop"
                    break
            self.sent[r] += len(new)
            if reason is None and (end >= job.max_tokens or final):
                reason = "length"
            if reason is not None:
                self.done[r] = True
            self.generated += len(new)
            if not job.cancelled.is_set():
                job.emit(choice, new, reason)


def load_engine(model: str | None, *, device: str = "cpu", dtype: str = "float32", name: str | None = None,
                defaults: Defaults = Defaults(), max_n: int = 8, exact_batching: bool = True) -> Engine:
    """Load a local model directory (None: the shipped model) with its tokenizer. Raises
    SystemExit with one line when the path is wrong, the tokenizer is missing or the family is not
    one the cache serves."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    import dllm_cache  # noqa: F401  (registers our model classes with transformers)
    from dllm_cache import shipped

    try:
        path = shipped.ready_model_dir(model) if model else shipped.default_model_dir()  # unpacks shipped weights once
    except shipped.CacheDirError as err:
        raise SystemExit(f"dllm-cache serve: {err}") from None
    if not (path / "config.json").is_file():
        raise SystemExit(f"dllm-cache serve: --model {path}: no config.json there; pass a local model directory.")
    try:
        AutoConfig.from_pretrained(path)
    except (ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SystemExit(f"dllm-cache serve: --model {path}: unsupported model family ({first})") from None
    try:
        net = AutoModel.from_pretrained(path, dtype=DTYPES[dtype]).to(device).eval()
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise SystemExit(f"dllm-cache serve: --model {path}: could not load the weights ({first})") from None
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # noqa: BLE001  (any tokenizer failure means the same to the user)
        raise SystemExit(f"dllm-cache serve: --model {path}: no usable tokenizer ({type(err).__name__}); the server "
                         "needs one to turn text into tokens") from None
    try:
        return Engine(net, tok, name=name or ("shipped" if model is None else path.name), defaults=defaults, max_n=max_n,
                      exact_batching=exact_batching)
    except ValueError as err:
        raise SystemExit(f"dllm-cache serve: --model {path}: {str(err).splitlines()[0]}") from None


__all__ = ["CACHE_PRESETS", "BatchReport", "Cancelled", "Decoding", "Defaults", "Engine", "Job", "RequestError",
           "load_engine"]
