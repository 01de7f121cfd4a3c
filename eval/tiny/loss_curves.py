"""Loss curves and held-out checks of proxy training runs, read back from their logs.

    python -m eval.tiny.loss_curves eval/results/proxy_training/train_llada.log.gz \
        eval/results/proxy_training/train_dream.log.gz eval/results/proxy_training/train_llada_large.log \
        eval/results/proxy_training/train_dream_large.log --out eval/results/proxy_training/loss_curves.png

A log is what `eval.tiny.train` prints (several resumed runs may be concatenated); every
"[train] step" line gives the mean loss per task family since the previous line, every "[eval]"
line the quick held-out exact match.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import re
from pathlib import Path

_STEP = re.compile(r"^\[train\] step (\d+) loss ([\d.]+) \(arith ([\d.]+|-) hotpot ([\d.]+|-)\).* tokens ([\d.]+)M")


def parse_log(text: str) -> dict:
    """{"steps": [{"step", "loss", "arith", "hotpot", "tokens_m"}], "evals": [{"step", "arith", "hotpot"}]}."""
    steps, evals = [], []
    for line in text.splitlines():
        if m := _STEP.match(line):
            step, loss, arith, hotpot, tokens = m.groups()
            steps.append({"step": int(step), "loss": float(loss), "arith": None if arith == "-" else float(arith),
                          "hotpot": None if hotpot == "-" else float(hotpot), "tokens_m": float(tokens)})
        elif line.startswith("[eval] "):
            row = ast.literal_eval(line[len("[eval] "):])
            evals.append({k: row.get(k) for k in ("step", "arith", "hotpot", "final")})
    return {"steps": steps, "evals": evals}


def plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, run), color in zip(runs.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        for family, style in (("arith", "-"), ("hotpot", "--")):
            pts = [(s["tokens_m"], s[family]) for s in run["steps"] if s[family] is not None]
            if pts:
                ax_loss.plot(*zip(*pts), style, color=color, lw=1, label=f"{name} {family}")
        tokens_at = {s["step"]: s["tokens_m"] for s in run["steps"]}
        for family, marker in (("arith", "o"), ("hotpot", "s")):
            pts = [(tokens_at.get(e["step"], _nearest(tokens_at, e["step"])), 100 * e[family])
                   for e in run["evals"] if e.get(family) is not None]
            if pts:
                ax_acc.plot(*zip(*pts), marker=marker, color=color, ls=":", label=f"{name} {family}")
    ax_loss.set(xlabel="training tokens (M)", ylabel="masked-diffusion loss (per batch, by family)", yscale="log",
                title="training loss")
    ax_acc.set(xlabel="training tokens (M)", ylabel="held-out exact match % (quick eval, n=64)",
               title="held-out accuracy during training", ylim=(-2, 102))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_log(path: Path) -> str:
    """A training log, plain or gzipped (.log.gz: the long committed logs are stored gzipped)."""
    return gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()


def run_name(path: Path) -> str:
    """The run's label: the name after 'train_' (train_llada.log and train_llada.log.gz are 'llada')."""
    return path.name.removesuffix(".gz").removesuffix(".log").removeprefix("train_")


def _nearest(tokens_at: dict[int, float], step: int) -> float:
    return tokens_at[min(tokens_at, key=lambda s: abs(s - step))] if tokens_at else 0.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("logs", nargs="+", type=Path, help="train_<name>.log[.gz] files; the name after 'train_' labels the run")
    p.add_argument("--out", type=Path, required=True, help="plot path (.png); the parsed curves go beside it as .json.gz")
    args = p.parse_args(argv)
    runs = {run_name(log): parse_log(read_log(log)) for log in args.logs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json.gz").write_bytes(gzip.compress(json.dumps(runs, indent=1).encode(), mtime=0))
    plot(runs, args.out)
    for name, run in runs.items():
        last = run["steps"][-1] if run["steps"] else {}
        print(f"{name}: {len(run['steps'])} loss points, last step {last.get('step')} at {last.get('tokens_m')}M tokens; "
              f"evals {[(e['step'], e['arith'], e['hotpot']) for e in run['evals']]}")


if __name__ == "__main__":
    main()
