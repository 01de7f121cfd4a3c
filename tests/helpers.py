"""Shared test inputs: a denoising trajectory with left-padded prompts of different lengths, and a byte-level
tokenizer for random-weight checkpoints (also eval/random_checkpoint.py's)."""

import contextlib
from collections.abc import Iterator

import torch

from tests.trajectory import trajectory  # noqa: F401  (re-exported: the tests import it from here)


def logits_along(model, seqs, mask):
    return [model(s, attention_mask=mask).logits for s in seqs]


STEP_COUNTERS = {"full": "full_steps", "response": "response_refresh_steps", "prompt": "prompt_refresh_steps",
              "partial": "partial_steps"}  # step kind -> its cache_stats counter


def cached_steps(model, config, seqs, mask, prompt_len):
    """Feed `seqs` to the model under `config`, one step each: per step its kind (the cache_stats
    counter it moved) and the stats before and after it; then the stats of the whole run."""
    from dllm_cache import cache_enabled, cache_stats, reset_cache

    kinds, pairs = [], []
    with cache_enabled(model, config):
        reset_cache(model, prompt_length=prompt_len)
        for s in seqs:
            before = cache_stats(model)
            model(s, attention_mask=mask)
            after = cache_stats(model)
            kinds.append(next(k for k, key in STEP_COUNTERS.items() if after[key] > before[key]))
            pairs.append((before, after))
        stats = cache_stats(model)
    return kinds, pairs, stats


def max_err(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def padded_prompts(model, batch: int = 3, length: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask (batch, length): row r has 2r pad tokens in front."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 200, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for r in range(batch):
        ids[r, : 2 * r] = model.config.pad_token_id
        mask[r, : 2 * r] = 0
    return ids, mask


def right_padded(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same prompts with their pads moved to the end of each row."""
    order = torch.argsort(1 - mask, dim=1, stable=True)  # real tokens first, pads after
    return ids.gather(1, order), mask.gather(1, order)


SPECIALS = ("<|mask|>", "<|eos|>", "<|pad|>")  # ids 256, 257, 258 after the 256 byte symbols


def byte_tokenizer():
    """Byte-level tokenizer without merges: every text round-trips; 256 bytes + 3 specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in SPECIALS:
        vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, mask_token="<|mask|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Intra-op threads for the block: tiny models gain nothing from a second thread, and on a shared 2-core
    runner threads oversubscribe (a server's batcher thread and pytest's own, or two busy processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
