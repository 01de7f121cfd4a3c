"""Offline word-level tokenizer for the synthetic tasks in `eval.tiny.tasks`.

Pieces are words, single digits, runs of '#', single other symbols and newlines; a piece that
follows a space carries it as a leading "▁" (so " 12" is "▁1", "2"). Decoding replaces "▁" by a
space and concatenates, so text made of known pieces round-trips exactly (``#### 9``, answers,
newlines). The vocabulary is closed: it is built from the generators' word lists and a fixed
sample of their output, plus "[UNK]" and the special tokens below.

The result is a `transformers.PreTrainedTokenizerFast`; after `save_pretrained(dir)`,
`AutoTokenizer.from_pretrained(dir)` loads it offline.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from . import tasks

MASK, EOS, PAD, UNK = "<|mdm_mask|>", "<|eos|>", "<|pad|>", "[UNK]"
SPECIALS = [PAD, EOS, MASK, UNK]  # ids 0, 1, 2, 3


def build_vocab(texts: list[str] | None = None) -> dict[str, int]:
    """Piece -> id: the special tokens first, then every piece seen (with and without "▁"), sorted."""
    texts = tasks.vocabulary_sample() if texts is None else texts
    seen: set[str] = set()
    for text in texts:
        seen.update(tasks.pieces(text))
    both = {p.removeprefix(tasks.SPACE) for p in seen if p not in ("\n", tasks.SPACE)}
    seen |= both | {tasks.SPACE + p for p in both}
    seen.discard("")
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for piece in sorted(seen):
        vocab.setdefault(piece, len(vocab))
    return vocab


def build_tokenizer(texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    """The project's tiny tokenizer (deterministic: same word lists, same ids)."""
    backend = Tokenizer(models.WordLevel(vocab=build_vocab(texts), unk_token=UNK))
    backend.normalizer = normalizers.Replace(" ", tasks.SPACE)
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(tasks.PIECE_PATTERN), behavior="isolated")
    backend.decoder = decoders.Sequence([decoders.Replace(tasks.SPACE, " "), decoders.Fuse()])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        mask_token=MASK,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    return tok


def load_or_build(path: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer from `path` when it holds one, else build it."""
    if path is not None and (Path(path) / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
        tok.padding_side = "left"
        return tok
    return build_tokenizer()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="build and save the tiny tokenizer")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    t = build_tokenizer()
    t.save_pretrained(args.out)
    print(f"saved {len(t)} tokens to {args.out}")
