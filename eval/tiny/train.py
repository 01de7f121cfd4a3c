"""Train the proxy models (LLaDA or Dream architecture) on the proxy tasks (masked diffusion SFT).

    PYTHONUNBUFFERED=1 PYTHONPATH=. python -m eval.tiny.train --arch llada --out /tmp/run_llada \
        --max-minutes 9.5 --total-minutes 19 --device cuda --export-dir "$OUT/llada"
    # later, on the same machine: add --resume (or --init-from <exported model dir> on a fresh one)

Objective (LLaDA SFT): a sequence is prompt + response, where the response is the target followed
by <|eos|> up to a fixed response length R (the eos padding is supervised). Per sequence,
t ~ U(0, 1) and p = (1 - eps) t + eps; each response token is replaced by <|mdm_mask|> with
probability p (the prompt never is); the loss is the cross entropy on masked tokens weighted by
1/p, divided by R, averaged over the batch. Dream (`--arch dream`) is trained with the same
objective through its shifted head: the logits at position i - 1 predict token i.

Batches: one task family per batch (hotpot with probability --hotpot-frac); a batch holds about
--batch-size x --seq-len tokens; R is the evaluation length of the family (arith 256, hotpot 32).
Hotpot rows share one distractor count: half of the hotpot batches draw it log-uniformly from
0 to the most that fits (a curriculum: retrieval is learnt faster where the answer is a larger
share of the tokens, then has to carry over to longer contexts), the rest have 1k-4k-token
contexts like the held-out set.
--single-hop-frac of the hotpot rows ask one fact (the hop the two-hop questions chain), a direct
signal for retrieval, which the first runs, on two-hop rows alone, did not learn in 400M tokens.
--suffix-frac of the rows mask the response from a random cut on, as semi-AR decoding sees it
(`masked_diffusion_loss`): under uniform masking alone a result can be copied from its later
restatement, and the first proxies never learnt to compute one.
--drill-frac of the arith rows are symbol drills (`tasks.make_arith_drill`): the first runs learnt
the solution format and copied operands, but wrote "31 + 3 = 47" (sums ~3% of the tokens).
Prompts are left padded with <|pad|> and
masked out of attention, exactly as at generation time. The data stream is a pure function of
(seed, step), so --resume continues it.

Time-bounded: the loop stops --max-minutes after start (minus a reserve for saving), writes the
checkpoint (fp32 weights, optimizer, step, RNG states) to <out>/checkpoint, the bf16 model and
tokenizer to <out>/model and, with --export-dir, there too (shards <= 15 MB).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import tasks
from .distributed import Ranks
from .tokenizer import load_or_build

# The proxy models shipped with the project (bf16 safetensors in shards <= 15 MB, tracked packed as
# *.safetensors.xz: export_model(pack=True), --pack):
# LLaDA ~13.3 M parameters (~27 MB), Dream (grouped-query attention like Dream-7B) ~9.4 M (~19 MB).
MODEL_CONFIGS = {
    "llada": dict(d_model=384, n_heads=6, n_kv_heads=6, n_layers=8, mlp_hidden_size=768),
    "dream": dict(hidden_size=384, num_attention_heads=6, num_key_value_heads=2, num_hidden_layers=8, intermediate_size=512),
}
# Micro models for CPU tests (--tiny-config).
TINY_CONFIGS = {
    "llada": dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128),
    "dream": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=128),
}
# Residual output projections, scaled by 1/sqrt(2 n_layers) at initialisation (GPT-2 style).
RESIDUAL_OUTPUTS = {"llada": ("attn_out", "ff_out"), "dream": ("o_proj", "down_proj")}

# Response length R per family: the generation length the held-out sets are evaluated with.
RESPONSE_LENGTH = {"arith": 256, "hotpot": 32}
SHORT_CONTEXT_FRAC = 0.5  # hotpot batches with 0..max distractors, log-uniform (curriculum), the rest 1k-4k tokens
SINGLE_HOP_FRAC = 0.3  # hotpot rows asking one fact (tasks.make_hotpot hops=1): a direct signal per hop
SUFFIX_FRAC = 0.5  # rows masked from a random cut on, so results must be computed, not copied
DRILL_FRAC = 0.4  # arith rows that are symbol drills (tasks.make_arith_drill): dense two-digit sums
MASK_EPS = 1e-3
SYNC_EVERY = 10  # steps between rank 0's clock decisions (stop, evaluate, save) in data-parallel runs
EXPORT_SHARD = "15MB"
MAX_SEQUENCE_LENGTH = 4608


def model_config(tok, arch: str = "llada", tiny: bool = False, max_sequence_length: int = MAX_SEQUENCE_LENGTH):
    """Config of a fresh proxy model for tokenizer `tok` (special-token ids taken from it)."""
    vocab = len(tok)
    sizes = (TINY_CONFIGS if tiny else MODEL_CONFIGS)[arch]
    special = dict(mask_token_id=tok.mask_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if arch == "dream":
        from dllm_cache.models.dream import DreamConfig

        return DreamConfig(**sizes, vocab_size=vocab, max_position_embeddings=max_sequence_length, rope_theta=10000.0,
                           rms_norm_eps=1e-5, bos_token_id=tok.eos_token_id, tie_word_embeddings=False, **special)
    from dllm_cache.models.llada import LLaDAConfig

    return LLaDAConfig(**sizes, vocab_size=vocab, embedding_size=64 * math.ceil(vocab / 64),
                       max_sequence_length=max_sequence_length, rope_theta=10000.0, rms_norm_eps=1e-5,
                       weight_tying=False, **special)


def model_class(arch: str):
    from dllm_cache.models.dream import DreamModel
    from dllm_cache.models.llada import LLaDAModelLM

    return {"llada": LLaDAModelLM, "dream": DreamModel}[arch]


def arch_of(config) -> str:
    return "dream" if config.model_type.lower() == "dream" else "llada"


# ----------------------------------------------------------------------------- data
@dataclass
class Batch:
    family: str
    input_ids: torch.Tensor  # (rows, P + R) prompt (left padded) + response
    attention_mask: torch.Tensor  # (rows, P + R) 1 = real token
    response_len: int  # R; the response is input_ids[:, -R:]
    step: int

    def pin_memory(self) -> Batch:  # called by the DataLoader's pin-memory thread
        return Batch(self.family, self.input_ids.pin_memory(), self.attention_mask.pin_memory(), self.response_len, self.step)


class BatchMaker:
    """Builds the training batch of a given step, deterministically from (seed, step)."""

    def __init__(
        self, tok, seed: int, seq_len: int, batch_size: int, hotpot_frac: float, max_rows: int, n_test: int = tasks.N_TEST,
        single_hop_frac: float = SINGLE_HOP_FRAC, drill_frac: float = DRILL_FRAC,
    ):
        self.tok = tok
        self.seed = seed
        self.seq_len = seq_len
        self.budget = batch_size * seq_len
        self.hotpot_frac = hotpot_frac
        self.single_hop_frac = single_hop_frac
        self.drill_frac = drill_frac
        self.max_rows = max_rows
        self.test_filter = tasks.TestPromptFilter(n_test)
        self.eos, self.pad = tok.eos_token_id, tok.pad_token_id
        # Largest distractor count that fits: ~45 tokens per paragraph, ~70 for instruction + question
        # (rows that do not fit are regenerated with fewer distractors).
        R = RESPONSE_LENGTH["hotpot"]
        self.max_distractors = max(1, (seq_len - R - 70) // tasks.PARAGRAPH_TOKENS - 2)

    def _distractors(self, rng: random.Random) -> int:
        if rng.random() < SHORT_CONTEXT_FRAC:
            # log-uniform over 0..max: every context size, the short ones (easy retrieval, many rows
            # per batch) most often; the probe showed retrieval learnt at 0 distractors but lost
            # past ~5 when this share stopped at 20 (eval/results/README.md)
            return min(int(math.exp(rng.uniform(0.0, math.log(self.max_distractors + 1)))) - 1, self.max_distractors)
        count = tasks.hotpot_distractors_for_tokens(rng, *tasks.TEST_CONTEXT_TOKENS)
        return max(1, min(count, self.max_distractors))

    def _encode(self, family: str, example: dict) -> tuple[list[int], list[int]]:
        prompt, target = tasks.prompt_and_target(family, example)
        enc = self.tok([prompt, target], add_special_tokens=False)["input_ids"]
        return enc[0], enc[1]

    def make(self, step: int) -> Batch:
        rng = random.Random(f"eval.tiny.train/batch/{self.seed}/{step}")
        family = "hotpot" if rng.random() < self.hotpot_frac else "arith"
        R = min(RESPONSE_LENGTH[family], self.seq_len // 2)
        distractors = self._distractors(rng)
        rows: list[tuple[list[int], list[int]]] = []
        target_rows, index = 1, 0
        while len(rows) < target_rows and index < 100_000:
            ex_rng = tasks.example_rng(family, "train", self.seed, step * 100_000 + index)
            index += 1
            if family == "arith":
                drill = ex_rng.random() < self.drill_frac
                example = tasks.make_arith_drill(ex_rng) if drill else tasks.make_arith(ex_rng)
            else:
                hops = 1 if ex_rng.random() < self.single_hop_frac else 2
                example = tasks.make_hotpot(ex_rng, distractors, hops=hops)
            prompt_text = tasks.prompt_and_target(family, example)[0]
            if prompt_text in self.test_filter:
                continue
            prompt, target = self._encode(family, example)
            if len(target) >= R or len(prompt) + R > self.seq_len:
                if family == "hotpot" and len(prompt) + R > self.seq_len:
                    distractors = max(0, distractors - 2)
                continue
            rows.append((prompt, target))
            if len(rows) == 1:  # size the batch from the first row
                target_rows = max(1, min(self.max_rows, int(self.budget / (1.1 * len(prompt) + R))))
        rows.sort(key=lambda r: len(r[0]))
        while len(rows) > 1 and len(rows) * (len(rows[-1][0]) + R) > 1.15 * self.budget:
            rows.pop()  # keep the padded batch near the token budget: drop the longest prompt
        P = len(rows[-1][0])
        P += -(P + R) % 16  # extra left padding: sequence lengths a multiple of 16 suit the attention kernels
        ids = torch.full((len(rows), P + R), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), P + R), dtype=torch.long)
        for i, (prompt, target) in enumerate(rows):
            response = target + [self.eos] * (R - len(target))
            ids[i, P - len(prompt) :] = torch.tensor(prompt + response)
            mask[i, P - len(prompt) :] = 1
        return Batch(family, ids, mask, R, step)


class BatchStream(torch.utils.data.IterableDataset):
    """Batches for steps start, start+1, ...; worker w of K makes steps start+w, start+w+K, ...
    (the DataLoader interleaves workers round-robin, so the order is exact)."""

    def __init__(self, tok_dir: str | None, start: int, rank: int = 0, world: int = 1, **maker_kwargs):
        super().__init__()
        self.tok_dir = tok_dir
        self.start = start
        self.rank, self.world = rank, world  # data-parallel rank r of W makes global batches step * W + r
        self.maker_kwargs = maker_kwargs

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
        maker = BatchMaker(load_or_build(self.tok_dir), **self.maker_kwargs)
        step = self.start + worker
        while True:
            yield maker.make(step * self.world + self.rank)
            step += workers


def collate_identity(x):
    return x


# ----------------------------------------------------------------------------- objective
def masked_diffusion_loss(
    model,
    batch: Batch,
    mask_id: int,
    generator: torch.Generator | None = None,
    shifted: bool = False,
    suffix_frac: float = 0.0,
    eos_id: int | None = None,
):
    """LLaDA SFT loss of a batch on the model's device -> (loss, masked token count as a tensor).

    `shifted` (Dream): the logits at position i - 1 predict token i.
    `suffix_frac`: that share of rows also masks every response token from a random cut on (cut
    uniform over the target, before the eos padding, found from `eos_id`), as semi-autoregressive
    decoding sees it. Why: the solutions restate each result ("= 68. Now she has 68"), so under
    uniform masking a result can nearly always be copied from a later visible restatement, and the
    model never has to compute it; generation decodes left to right, where nothing later is known.
    Suffix rows keep the loss scale (1/p of the masked tokens over R, with p the row's masked share).
    """
    ids, attn = batch.input_ids, batch.attention_mask
    rows, L = ids.shape
    R = batch.response_len
    t = torch.rand(rows, device=ids.device, generator=generator)
    p = (1 - MASK_EPS) * t + MASK_EPS  # (rows,)
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, L - R :] = True
    draw = torch.rand(ids.shape, device=ids.device, generator=generator)
    masked = response & (draw < p[:, None])  # (rows, L)
    if suffix_frac > 0:
        if eos_id is None:
            raise ValueError("suffix masking needs eos_id (to find where each target ends)")
        target_len = (ids[:, L - R :] != eos_id).sum(1)  # (rows,) the target precedes the eos padding
        cut = (torch.rand(rows, device=ids.device, generator=generator) * (target_len + 1)).long()
        suffix_row = torch.rand(rows, device=ids.device, generator=generator) < suffix_frac
        after = torch.arange(L, device=ids.device)[None, :] >= (L - R + cut)[:, None]  # (rows, L)
        masked = masked | (suffix_row[:, None] & after)
        p = torch.where(suffix_row, masked.sum(1).float() / R, p).clamp_min(1.0 / R)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(noisy, attention_mask=attn).logits  # (rows, L, vocab)
    if shifted:  # masked positions are response positions >= 1, so i - 1 is always in range
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    token_loss = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")  # (n_masked,)
    weight = (1.0 / p)[:, None].expand(rows, L)[masked] / R
    loss = (token_loss * weight).sum() / rows
    return loss, masked.sum()


def _new_window(device) -> dict:
    """Running sums between two progress lines."""
    zero = torch.zeros((), device=device)
    return {"arith": zero.clone(), "hotpot": zero.clone(), "n_arith": 0, "n_hotpot": 0, "tokens": 0}


def lr_at(step: int, progress: float, args, rewarm_from: int | None = None) -> float:
    """Linear warmup over --warmup steps, then cosine from --lr to --lr * --min-lr-frac by `progress`.

    `rewarm_from`: a step where a fresh optimizer took over (--init-from); the LR ramps up again
    over --warmup steps from there, since Adam's moments start from zero.
    """
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(max(progress, 0.0), 1.0)
    floor = args.lr * args.min_lr_frac
    lr = floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * progress))
    if rewarm_from is not None and step - rewarm_from < args.warmup:
        lr *= (step - rewarm_from + 1) / args.warmup
    return lr


# ----------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(ckpt_dir: Path, model, optimizer, tok, meta: dict) -> None:
    """fp32 weights + optimizer + meta (step, seconds, tokens, args) + RNG states, written atomically."""
    from safetensors.torch import save_file

    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "rng": _rng_state()}, tmp / "optimizer.pt")
    model.config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "train_state.json").write_text(json.dumps(meta, indent=2))
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt_dir.exists():
        ckpt_dir.rename(old)
    tmp.rename(ckpt_dir)
    shutil.rmtree(old, ignore_errors=True)


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an exported model or checkpoint folder (all its *.safetensors shards; packed
    shards, as the shipped models store them, are read from their unpacked copy)."""
    from safetensors.torch import load_file

    from dllm_cache.shipped import ready_model_dir

    state: dict[str, torch.Tensor] = {}
    for f in sorted(ready_model_dir(folder).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def export_model(model, tok, out_dir: Path, summary: dict | None = None, pack: bool | None = None) -> list[str]:
    """Write the bf16 model (safetensors shards <= 15 MB), config and tokenizer to `out_dir`.

    pack: store the shards as *.safetensors.xz (dllm_cache.shipped.pack), as the shipped models in
    eval/tiny are tracked (~30% smaller); None packs when `out_dir` held packed weights already, so
    re-exporting a shipped model keeps its storage."""
    from dllm_cache.shipped import PACKED_SUFFIX
    from dllm_cache.shipped import pack as pack_weights

    out_dir.mkdir(parents=True, exist_ok=True)
    if pack is None:
        pack = any(out_dir.glob("*" + PACKED_SUFFIX))
    for old in out_dir.glob("model*.safetensors*"):
        old.unlink()
    export = type(model)(model.config)
    export.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    export = export.to(torch.bfloat16)
    export.save_pretrained(out_dir, safe_serialization=True, max_shard_size=EXPORT_SHARD)
    tok.save_pretrained(out_dir)
    if summary is not None:
        (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
    if pack:
        pack_weights(out_dir)
    return sorted(p.name for p in out_dir.iterdir())


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=("llada", "dream"), default="llada", help="model architecture (fresh runs)")
    p.add_argument("--out", required=True, help="run folder: checkpoint/ and model/ go here")
    p.add_argument("--export-dir", default=None, help="also write the final bf16 model + tokenizer here (e.g. $OUT/model)")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                   help="store the --export-dir weights as *.safetensors.xz, as the shipped models are (default: pack "
                        "when the folder held packed weights)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint (weights, optimizer, step, RNG)")
    p.add_argument(
        "--init-from",
        default=None,
        help="start from an exported model folder (weights only; "
        "step and seconds are read from its training_summary.json when present)",
    )
    p.add_argument("--max-minutes", type=float, default=8.0, help="wall-clock budget of this process")
    p.add_argument(
        "--total-minutes",
        type=float,
        default=None,
        help="training minutes the LR schedule spans over all runs (default: this run's budget)",
    )
    p.add_argument("--steps", type=int, default=None, help="stop at this (global) step; also the schedule length")
    p.add_argument("--batch-size", type=int, default=24, help="rows of --seq-len tokens per batch (token budget)")
    p.add_argument("--seq-len", type=int, default=4160, help="longest training sequence (prompt + response)")
    p.add_argument("--max-rows", type=int, default=512, help="cap on rows of a batch of short sequences")
    p.add_argument("--hotpot-frac", type=float, default=0.5, help="fraction of batches from the hotpot family")
    p.add_argument("--single-hop-frac", type=float, default=SINGLE_HOP_FRAC,
                   help="fraction of hotpot rows that ask one fact (the hop the two-hop questions chain)")
    p.add_argument("--suffix-frac", type=float, default=SUFFIX_FRAC,
                   help="fraction of rows whose response is masked from a random cut on (semi-AR decoding's view)")
    p.add_argument("--drill-frac", type=float, default=DRILL_FRAC,
                   help="fraction of arith rows that are symbol drills (chains of two-digit sums)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=tasks.TRAIN_SEED)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    p.add_argument("--workers", type=int, default=None, help="data workers (default: min(6, cpus - 1); 0 = in-process)")
    p.add_argument("--log-every", type=int, default=25, help="print a progress line every N steps")
    p.add_argument("--eval-every-minutes", type=float, default=2.5, help="quick held-out eval period (0 = never)")
    p.add_argument("--eval-n", type=int, default=32, help="held-out examples per family in the quick eval")
    p.add_argument("--no-final-eval", action="store_true")
    p.add_argument("--save-every-minutes", type=float, default=3.0)
    p.add_argument(
        "--reserve-seconds",
        type=float,
        default=None,
        help="time kept for the final save/export/eval (default 30 s on GPU, 5 s on CPU)",
    )
    p.add_argument("--tiny-config", action="store_true", help="micro model for CPU tests")
    return p.parse_args(argv)


def quick_eval(model, tok, args, device: str) -> dict:
    """Exact match on the first --eval-n held-out examples of each family; never raises."""
    from .evaluate import GEN_SETTINGS, accuracy_of

    out: dict = {}
    was_training = model.training
    model.eval()
    try:
        for family in ("arith", "hotpot"):
            examples = tasks.test_examples(family, args.eval_n)
            t0 = time.time()
            acc, _ = accuracy_of(
                model,
                tok,
                family,
                examples,
                device=device,
                settings=GEN_SETTINGS[family],
                batch_size=64 if family == "arith" else 16,
            )
            out[family] = round(acc, 4)
            out[f"{family}_seconds"] = round(time.time() - t0, 1)
    except Exception:  # an eval failure must never stop training
        traceback.print_exc()
        out["error"] = traceback.format_exc(limit=3)
    finally:
        model.train(was_training)
    return out


def main(argv: list[str] | None = None) -> dict:
    start_time = time.time()
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False; pass --device cpu.")
    ranks = Ranks.from_env(args.device)  # one process unless launched by torchrun
    device = ranks.device
    try:
        return _train(args, ranks, device, start_time)
    finally:
        ranks.close()


def _say(ranks: Ranks, text: str) -> None:
    if ranks.main:
        print(text, flush=True)


def _train(args: argparse.Namespace, ranks: Ranks, device: str, start_time: float) -> dict:
    on_cuda = device.startswith("cuda")
    reserve = args.reserve_seconds if args.reserve_seconds is not None else (30.0 if on_cuda else 5.0)
    deadline = start_time + args.max_minutes * 60 - reserve
    out = Path(args.out)
    ckpt_dir = out / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)
    if on_cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 matmuls outside autocast

    meta = {"step": 0, "train_seconds": 0.0, "tokens": 0, "examples": 0, "evals": []}
    tok_dir = None
    if args.resume:
        if not (ckpt_dir / "train_state.json").is_file():
            raise SystemExit(f"--resume: no checkpoint at {ckpt_dir} (expected train_state.json there).")
        tok_dir = str(ckpt_dir)
        meta.update(json.loads((ckpt_dir / "train_state.json").read_text()))
    elif args.init_from:
        tok_dir = args.init_from
        summary = Path(args.init_from) / "training_summary.json"
        if summary.is_file():
            prev = json.loads(summary.read_text())
            for key in ("step", "train_seconds", "tokens", "examples"):
                meta[key] = prev.get(key, meta[key])
            meta["evals"] = prev.get("evals", [])
        # A fresh optimizer gets a fresh LR schedule: --total-minutes counts from here, not from
        # the first run (otherwise a continued model trains at the floor LR from its first step).
        meta["schedule_from_seconds"] = meta["train_seconds"]
    tok = load_or_build(tok_dir)

    # Each rank draws its own masks; a resumed multi-rank run reseeds instead of restoring RNG states.
    torch.manual_seed(args.seed + meta["step"] + 1_000_003 * ranks.rank)
    if args.resume or args.init_from:
        from transformers import AutoConfig

        import dllm_cache  # noqa: F401  (registers the model types with AutoConfig)

        src = Path(tok_dir)
        config = AutoConfig.from_pretrained(src)
        model = model_class(arch_of(config))(config)
        state = read_weights(src)
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        if missing or unexpected:
            raise SystemExit(f"checkpoint {src} does not match the model: missing {missing}, unexpected {unexpected}")
    else:
        config = model_config(tok, args.arch, tiny=args.tiny_config)
        model = model_class(args.arch)(config)
        # GPT-2 style: scale the residual output projections by depth.
        n_layers = config.num_hidden_layers if args.arch == "dream" else config.n_layers
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.rsplit(".", 2)[-2] in RESIDUAL_OUTPUTS[args.arch]:
                    param.mul_(1 / math.sqrt(2 * n_layers))
    arch = arch_of(model.config)
    model = model.float().to(device).train()
    n_params = sum(p.numel() for p in model.parameters())

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        **({"fused": True} if on_cuda else {}),
    )
    if args.resume:
        saved = torch.load(ckpt_dir / "optimizer.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
    if args.resume and ranks.world == 1:
        rng = saved["rng"]
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if on_cuda and "cuda" in rng:
            torch.cuda.set_rng_state_all(rng["cuda"])

    step0 = int(meta["step"])
    horizon_s = (args.total_minutes * 60 - reserve) if args.total_minutes else (deadline - start_time)
    horizon_s = max(horizon_s, 1.0)
    workers = args.workers if args.workers is not None else max(0, min(6, (os.cpu_count() or 2) - 1))
    maker_kwargs = dict(
        seed=args.seed, seq_len=args.seq_len, batch_size=args.batch_size, hotpot_frac=args.hotpot_frac, max_rows=args.max_rows,
        single_hop_frac=args.single_hop_frac, drill_frac=args.drill_frac,
    )
    stream = BatchStream(tok_dir, step0, rank=ranks.rank, world=ranks.world, **maker_kwargs)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        collate_fn=collate_identity,
        pin_memory=on_cuda,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    train_model = ranks.wrap(model)
    train_model = torch.compile(train_model, dynamic=True) if args.compile else train_model
    _say(
        ranks,
        f"[train] {arch} model {n_params / 1e6:.2f} M params ({2 * n_params / 1e6:.1f} MB bf16), vocab {len(tok)} "
        f"(embedding {model.get_input_embeddings().weight.shape[0]}), device {device}, workers {workers}, start step {step0}, "
        f"budget {args.max_minutes} min, schedule {horizon_s / 60:.1f} train-min, "
        f"batch ~{args.batch_size}x{args.seq_len} tokens" + (f" per rank, {ranks.world} ranks" if ranks.world > 1 else ""),
    )

    mask_id = config.mask_token_id
    step = step0
    train_seconds0 = float(meta["train_seconds"])
    loop_start = time.time()
    last_log, last_eval, last_save = time.time(), time.time(), time.time()
    window = _new_window(device)
    stop_reason = "time"
    tokens0, examples0 = int(meta["tokens"]), int(meta["examples"])
    local_tokens = local_examples = 0  # this rank's, since this run started
    do_eval = do_save = False
    for batch in loader:
        if args.steps is not None and step >= args.steps:
            stop_reason = "steps"
            break
        if ranks.world == 1 or (step - step0) % SYNC_EVERY == 0:  # rank 0's clock decides for all
            now = time.time()
            stop, do_eval, do_save = ranks.agree(
                now >= deadline,
                bool(args.eval_every_minutes) and now - last_eval > args.eval_every_minutes * 60 and now + 30 < deadline,
                bool(args.save_every_minutes) and now - last_save > args.save_every_minutes * 60,
            )
            if stop:
                break
        train_seconds = train_seconds0 + (time.time() - loop_start)
        schedule_seconds = train_seconds - float(meta.get("schedule_from_seconds", 0.0))
        progress = step / args.steps if args.steps else schedule_seconds / horizon_s
        lr = lr_at(step, progress, args, rewarm_from=step0 if args.init_from and not args.resume else None)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = Batch(
            batch.family,
            batch.input_ids.to(device, non_blocking=True),
            batch.attention_mask.to(device, non_blocking=True),
            batch.response_len,
            batch.step,
        )
        with torch.autocast("cuda" if on_cuda else "cpu", dtype=torch.bfloat16, enabled=on_cuda):
            loss, _ = masked_diffusion_loss(
                train_model, batch, mask_id, shifted=arch == "dream", suffix_frac=args.suffix_frac, eos_id=config.eos_token_id
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        step += 1
        n_tokens = batch.input_ids.numel()
        window[batch.family] += loss.detach()  # summed on the device: no host sync per step
        window["n_" + batch.family] += 1
        window["tokens"] += n_tokens
        local_tokens += n_tokens
        local_examples += batch.input_ids.shape[0]
        if step % args.log_every == 0 or step == step0 + 1:  # every rank: the token count is a collective
            window["tokens"] = ranks.total(window["tokens"])
            meta["tokens"] = tokens0 + ranks.total(local_tokens)
            now = time.time()
            sums = {k: float(window[k]) for k in ("arith", "hotpot")}
            counts = {k: window["n_" + k] for k in ("arith", "hotpot")}
            mean = sum(sums.values()) / max(1, sum(counts.values()))
            if not math.isfinite(mean):
                raise SystemExit(f"loss is {mean} near step {step}; lower --lr (now {args.lr}).")
            fam = " ".join(f"{k} {sums[k] / counts[k]:.3f}" if counts[k] else f"{k} -" for k in sums)
            _say(
                ranks,
                f"[train] step {step} loss {mean:.4f} ({fam}) lr {lr:.2e} "
                f"tok/s {window['tokens'] / max(1e-9, now - last_log):,.0f} tokens {meta['tokens'] / 1e6:.1f}M "
                f"elapsed {now - start_time:.0f}s",
            )
            window = _new_window(device)
            last_log = now
        if do_eval:
            if ranks.main:
                result = {"step": step, **quick_eval(model, tok, args, device)}
                meta["evals"].append(result)
                print(f"[eval] {result}", flush=True)
            ranks.barrier()
            last_eval, do_eval = time.time(), False
        if do_save:
            meta.update(
                step=step, train_seconds=train_seconds0 + time.time() - loop_start, tokens=tokens0 + ranks.total(local_tokens)
            )
            if ranks.main:
                save_checkpoint(ckpt_dir, model, optimizer, tok, {**meta, "args": vars(args)})
            ranks.barrier()
            last_save, do_save = time.time(), False

    meta.update(
        step=step, train_seconds=round(train_seconds0 + time.time() - loop_start, 1),
        tokens=tokens0 + ranks.total(local_tokens), examples=examples0 + ranks.total(local_examples),
    )
    _say(
        ranks,
        f"[train] stopped ({stop_reason}) at step {step} after {time.time() - start_time:.0f}s; "
        f"{meta['tokens'] / 1e6:.1f}M tokens, {meta['examples']} examples in total",
    )
    if not ranks.main:  # rank 0 saves, evaluates and exports
        ranks.barrier()
        return {}
    save_checkpoint(ckpt_dir, model, optimizer, tok, {**meta, "args": vars(args)})
    if not args.no_final_eval:
        result = {"step": step, "final": True, **quick_eval(model, tok, args, device)}
        meta["evals"].append(result)
        print(f"[eval] {result}", flush=True)
    summary = {
        **meta,
        "params": n_params,
        "arch": arch,
        "config": {k: v for k, v in model.config.to_dict().items() if k in (MODEL_CONFIGS[arch] | TINY_CONFIGS[arch])},
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "device": device,
        "ranks": ranks.world,
        "torch": torch.__version__,
    }
    files = export_model(model, tok, out / "model", summary)
    print(f"[export] {out / 'model'}: {files}", flush=True)
    if args.export_dir:
        files = export_model(model, tok, Path(args.export_dir), summary, pack=args.pack)
        sizes = {f: os.path.getsize(Path(args.export_dir) / f) for f in files}
        print(f"[export] {args.export_dir}: {sizes}", flush=True)
    print(f"[train] done in {time.time() - start_time:.0f}s", flush=True)
    ranks.barrier()
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
