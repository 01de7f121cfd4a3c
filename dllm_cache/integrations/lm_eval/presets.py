"""Per-task settings of the published LLaDA / Dream + dLLM-Cache evaluations, by name.

    --model_args pretrained=PATH,preset=llada-instruct-gsm8k      (model args only)
    dllm-cache eval --preset llada-instruct-gsm8k --model_args pretrained=PATH   (also task, shots, chat)

Source of every value: the dLLM-Cache authors' evaluation scripts (github.com/maomaocun/dLLM-cache,
scripts/run_{LLaDA,Dream}_<task>_{base,Instruct}.sh, commit 17235bf), which run lm-eval's standard
tasks with the samplers of the LLaDA and Dream repositories. A script's cached run gives the cache
settings (prompt_interval_steps = Kp, gen_interval_steps = Kr, transfer_ratio); where a script has
two cached runs the first is the preset and the other is in `note`. Combinations the authors did
not publish are in UNPUBLISHED, with what is missing, instead of being made up. Explicit model
args override a preset's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SOURCE = "dLLM-Cache scripts/run_{script}.sh (github.com/maomaocun/dLLM-cache @17235bf)"


@dataclass(frozen=True)
class Preset:
    """One model x task setting. `model_args` go to the `dllm_cache` lm-eval model;
    `lm_eval_args` are the lm-eval command-line settings the source ran with."""

    name: str
    model: str  # checkpoint the source evaluated
    family: str  # "llada" | "dream"
    task: str  # lm-eval task the source ran
    local_task: str | None  # our task on vendored data (tasks/), None: needs the hub dataset
    num_fewshot: int | None  # None: the task's default
    chat: bool  # --apply_chat_template --fewshot_as_multiturn
    model_args: dict[str, Any]
    script: str
    note: str = ""
    batch_size: int = 2  # what the source ran with (speed only; not applied)
    lm_eval_args: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        args: dict[str, Any] = {"tasks": self.local_task or self.task}
        if self.num_fewshot is not None:
            args["num_fewshot"] = self.num_fewshot
        if self.chat:
            args["apply_chat_template"] = True
            args["fewshot_as_multiturn"] = True
        object.__setattr__(self, "lm_eval_args", args)

    @property
    def source(self) -> str:
        return SOURCE.format(script=self.script)


def _llada(gen: int, block: int, kp: int, kr: int) -> dict[str, Any]:
    """LLaDA sampler of the scripts: steps = gen_length, low-confidence remasking, greedy, no CFG."""
    return dict(gen_length=gen, steps=gen, block_length=block, temperature=0.0, cfg_scale=0.0,
                remasking="low_confidence", cache=True, prompt_interval=kp, response_interval=kr, transfer_ratio=0.25)


def _dream(kp: int, kr: int) -> dict[str, Any]:
    """Dream sampler of the scripts: 256 tokens in 256 steps, temperature 0.2, top-p 0.95, entropy order."""
    return dict(gen_length=256, steps=256, temperature=0.2, top_p=0.95, alg="entropy",
                cache=True, prompt_interval=kp, response_interval=kr, transfer_ratio=0.25)


_LB, _LI = "GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-8B-Instruct"
_DB, _DI = "Dream-org/Dream-v0-Base-7B", "Dream-org/Dream-v0-Instruct-7B"

_ALL = [
    # ---- LLaDA-8B-Base
    Preset("llada-base-gsm8k", _LB, "llada", "gsm8k", "gsm8k_local", 4, False, _llada(256, 256, 100, 6),
           "LLaDA_gsm8k_base", "second cached run: Kp=25 Kr=5"),
    Preset("llada-base-math", _LB, "llada", "minerva_math", None, 4, False, _llada(256, 256, 50, 8), "LLaDA_minerva_math_base"),
    Preset("llada-base-humaneval", _LB, "llada", "humaneval", None, 0, False, _llada(256, 256, 50, 5),
           "LLaDA_humaneval_base", "add_bos_token=True in the script"),
    Preset("llada-base-mbpp", _LB, "llada", "mbpp", None, 3, False, _llada(256, 32, 50, 4),
           "LLaDA_mbpp_base", "second cached run: Kp=25 Kr=4"),
    Preset("llada-base-gpqa", _LB, "llada", "gpqa_main_generative_n_shot", None, 5, False, _llada(256, 256, 100, 8),
           "LLaDA_gpqa_base"),
    Preset("llada-base-bbh", _LB, "llada", "bbh", None, 3, False, _llada(256, 256, 50, 6), "LLaDA_bbh_base"),
    Preset("llada-base-mmlu-pro", _LB, "llada", "mmlu_pro", None, 0, False, _llada(256, 256, 100, 6), "LLaDA_mmlu_pro_base"),
    # ---- LLaDA-8B-Instruct
    Preset("llada-instruct-gsm8k", _LI, "llada", "gsm8k", "gsm8k_local", 4, True, _llada(256, 8, 50, 7), "LLaDA_gsm8k_Instruct"),
    Preset("llada-instruct-math", _LI, "llada", "minerva_math", None, 0, True, _llada(256, 256, 50, 1),
           "LLaDA_minerva_math_Instruct"),
    Preset("llada-instruct-humaneval", _LI, "llada", "humaneval", None, None, False, _llada(512, 32, 50, 8),
           "LLaDA_humaneval_Instruct", "no chat template in the script; add_bos_token=True; second cached run: Kp=25 Kr=5"),
    Preset("llada-instruct-mbpp", _LI, "llada", "mbpp", None, 3, True, _llada(512, 32, 100, 5), "LLaDA_mbpp_Instruct"),
    Preset("llada-instruct-gpqa", _LI, "llada", "gpqa_main_generative_n_shot", None, 5, True, _llada(128, 64, 50, 6),
           "LLaDA_gpqa_Instruct"),
    Preset("llada-instruct-bbh", _LI, "llada", "bbh", None, 3, True, _llada(256, 256, 50, 6), "LLaDA_bbh_Instruct"),
    Preset("llada-instruct-mmlu-pro", _LI, "llada", "mmlu_pro", None, 0, True, _llada(256, 256, 51, 3),
           "LLaDA_mmlu_pro_Instruct"),
    Preset("llada-instruct-hotpotqa", _LI, "llada", "longbench_hotpotqa", "hotpotqa_long", 0, True, _llada(32, 32, 100, 8),
           "LLaDA_long_bench_Instruct", "hotpotqa_long stands in for LongBench's hotpotqa data", batch_size=1),
    # ---- Dream-v0-Base-7B
    Preset("dream-base-gsm8k", _DB, "dream", "gsm8k_cot", "gsm8k_cot_local", 8, False, _dream(100, 8), "Dream_gsm8k_base"),
    Preset("dream-base-math", _DB, "dream", "minerva_math", None, 4, False, _dream(100, 4), "Dream_minerva_math_base"),
    Preset("dream-base-humaneval", _DB, "dream", "humaneval", None, 0, False, _dream(5, 1), "Dream_humaneval_base",
           "the Dream repo post-processes HumanEval samples (postprocess_code.py)"),
    Preset("dream-base-mbpp", _DB, "dream", "mbpp", None, 3, False, _dream(25, 8), "Dream_mbpp_base"),
    Preset("dream-base-gpqa", _DB, "dream", "gpqa_main_generative_n_shot", None, 5, False, _dream(100, 8), "Dream_gpqa_base"),
    Preset("dream-base-bbh", _DB, "dream", "bbh", None, 3, False, _dream(25, 4), "Dream_bbh_base"),
    Preset("dream-base-mmlu-pro", _DB, "dream", "mmlu_pro", None, 0, False, _dream(25, 2), "Dream_mmlu_pro_base"),
    # ---- Dream-v0-Instruct-7B
    Preset("dream-instruct-gsm8k", _DI, "dream", "gsm8k_cot", "gsm8k_cot_local", 8, False, _dream(25, 2),
           "Dream_gsm8k_Instruct", "no chat template in the script"),
    Preset("dream-instruct-math", _DI, "dream", "minerva_math", None, 4, False, _dream(50, 1), "Dream_minerva_math_Instruct",
           "no chat template in the script"),
    Preset("dream-instruct-humaneval", _DI, "dream", "humaneval", None, 0, False, _dream(50, 1), "Dream_humaneval_Instruct",
           "no chat template in the script"),
    Preset("dream-instruct-mbpp", _DI, "dream", "mbpp", None, 3, False, _dream(10, 8), "Dream_mbpp_Instruct",
           "no chat template in the script"),
    Preset("dream-instruct-gpqa", _DI, "dream", "gpqa_main_generative_n_shot", None, 5, True, _dream(10, 8),
           "Dream_gpqa_Instruct"),
    Preset("dream-instruct-bbh", _DI, "dream", "bbh", None, 3, False, _dream(10, 2), "Dream_bbh_Instruct",
           "no chat template in the script"),
    Preset("dream-instruct-mmlu-pro", _DI, "dream", "mmlu_pro", None, 0, True, _dream(5, 1), "Dream_mmlu_pro_Instruct"),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}

# Model x task pairs of the list that no source publishes settings for.
UNPUBLISHED: dict[str, str] = {
    "llada-base-hotpotqa": "the dLLM-Cache scripts run LongBench HotpotQA on LLaDA-8B-Instruct only",
    "dream-base-hotpotqa": "the dLLM-Cache scripts have no HotpotQA / LongBench run for Dream",
    "dream-instruct-hotpotqa": "the dLLM-Cache scripts have no HotpotQA / LongBench run for Dream",
}


def get_preset(name: str) -> Preset:
    """The preset called `name`; a clear error listing the known ones otherwise."""
    key = str(name).strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    if key in UNPUBLISHED:
        raise ValueError(f"preset {name!r} does not exist: {UNPUBLISHED[key]}. Set gen_length, steps, "
                         f"block_length and the cache intervals yourself. Known presets: {', '.join(sorted(PRESETS))}")
    raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))} "
                     "(see docs/evaluation.md, 'Presets')")


def apply_preset(model_args: dict[str, Any]) -> tuple[dict[str, Any], Preset | None]:
    """`model_args` with `preset=NAME` expanded: the preset's model args, then the explicit ones
    on top (explicit args win). Returns the merged args and the preset (None without one)."""
    if model_args.get("preset") in (None, ""):
        return {k: v for k, v in model_args.items() if k != "preset"}, None
    preset = get_preset(model_args["preset"])
    explicit = {k: v for k, v in model_args.items() if k != "preset"}
    return {**preset.model_args, **explicit}, preset


def markdown_table() -> str:
    """The preset table of docs/evaluation.md, generated from PRESETS (a test keeps it in sync)."""
    lines = [
        "| preset | lm-eval task (local) | shots, chat | gen / steps / block | Kp / Kr / ratio | sampler | source script |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in PRESETS.values():
        a = p.model_args
        task = p.task + (f" (`{p.local_task}`)" if p.local_task else "")
        shots = "task default" if p.num_fewshot is None else str(p.num_fewshot)
        sampler = (f"greedy, {a['remasking']}" if p.family == "llada"
                   else f"T {a['temperature']}, top-p {a['top_p']}, {a['alg']}")
        lines.append(
            f"| `{p.name}` | {task} | {shots}{', chat' if p.chat else ''} | {a['gen_length']} / {a['steps']} / "
            f"{a.get('block_length', '-')} | {a['prompt_interval']} / {a['response_interval']} / {a['transfer_ratio']} "
            f"| {sampler} | `run_{p.script}.sh`{'; ' + p.note if p.note else ''} |"
        )
    for name, why in UNPUBLISHED.items():
        lines.append(f"| {name} | not published | | | | | {why} |")
    return "\n".join(lines)
