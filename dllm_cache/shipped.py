"""The model and task shipped with the package: the defaults of `dllm-cache generate`.

A wheel installs the folder eval/tiny/model as `dllm_cache/default_model` and
eval/data/arith_synth as `dllm_cache/default_data` (pyproject package-dir); a source checkout
(editable install, PYTHONPATH=.) reads them in place. Prompt and answer check are those of the
arithmetic task the model was trained on (eval/tiny/tasks.py): "Question: {q}\\nAnswer:", and
the answer is the number after "####".

The shipped weights are stored packed (`*.safetensors.xz`, stdlib lzma, lossless: bf16 weights
shrink by ~30%), which keeps the repository and the wheel small (issue 24, item 5). Loaders never
read the packed files: `ready_model_dir(folder)` unpacks them once into a per-user cache
($DLLM_CACHE_HOME, else $XDG_CACHE_HOME/dllm_cache or ~/.cache/dllm_cache, under shipped/) and
returns a folder that `from_pretrained` loads; a folder of plain safetensors comes back as is.
`pack(folder)` is the inverse, used by the scripts that write a shipped model (eval/tiny/train.py,
grow.py).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import tempfile
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent
PACKED_SUFFIX = ".safetensors.xz"  # a packed safetensors file: `name.safetensors` compressed whole with lzma (xz format)
CACHE_ENV = "DLLM_CACHE_HOME"  # where packed weights are unpacked (its shipped/ subfolder); must exist when set
_KEYS: dict[tuple, str] = {}  # content key of a folder by its files' (name, size, mtime): hash once per process


class CacheDirError(OSError):
    """The folder where packed weights are unpacked is missing or not writable."""


def _first_existing(what: str, *candidates: Path) -> Path:
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(
        f"The shipped {what} is missing (looked in {', '.join(str(c) for c in candidates)}). "
        "Reinstall dllm-cache (`pip install .` from a checkout ships it), or pass your own."
    )


def default_model_source() -> Path:
    """Folder of the shipped small trained LLaDA as shipped (config, tokenizer, packed weights)."""
    return _first_existing("model", _PACKAGE / "default_model", _CHECKOUT / "eval" / "tiny" / "model")


def default_model_dir() -> Path:
    """Loadable folder of the shipped small trained LLaDA (config, tokenizer, safetensors): the
    per-user unpacked copy of default_model_source() (see ready_model_dir)."""
    return ready_model_dir(default_model_source())


def default_dream_model_dir() -> Path:
    """Loadable folder of the shipped small trained Dream (a source checkout only: the wheel ships
    the LLaDA alone, the main job's model)."""
    return ready_model_dir(_first_existing("Dream model", _CHECKOUT / "eval" / "tiny" / "dream_model"))


def cache_root() -> Path:
    """Where packed weights are unpacked: $DLLM_CACHE_HOME, else $XDG_CACHE_HOME/dllm_cache, else
    ~/.cache/dllm_cache (the models go in its shipped/ subfolder)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except (RuntimeError, KeyError):  # no $HOME and no passwd entry
        raise CacheDirError(f"no home folder to cache unpacked model weights in: set ${CACHE_ENV} to a writable folder") from None
    return Path(base).expanduser() / "dllm_cache"


def ready_model_dir(path: str | os.PathLike[str]) -> Path:
    """A folder that `from_pretrained` loads, for the model folder `path`.

    A folder holding `*.safetensors.xz` without their unpacked `*.safetensors` beside them is
    unpacked once into cache_root()/shipped/<folder name>-<hash of the folder's files>/ (the weights
    unpacked, every other file copied), and that folder is returned; later calls, in this process
    or another, find it and unpack nothing. The copy is written to a temporary folder and renamed
    into place, so concurrent processes (pytest workers, lm-eval workers) never see a half-written
    folder. Anything else (plain safetensors, a missing path) is returned as is, for the caller to
    load or report. Raises CacheDirError when the cache folder is missing or not writable.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return folder
    packed = sorted(folder.glob("*" + PACKED_SUFFIX))
    if all((folder / p.name[: -len(".xz")]).is_file() for p in packed):  # nothing packed, or unpacked in place
        return folder
    target = _shipped_cache(folder) / f"{folder.name}-{_content_key(folder)}"
    if target.is_dir():  # complete: folders only appear there by an atomic rename
        return target
    return _unpack(folder, packed, target)


def pack(folder: str | os.PathLike[str]) -> list[Path]:
    """Replace every `*.safetensors` in `folder` by its `*.safetensors.xz` (lossless: the
    decompressed bytes' sha256 is checked against the original's before the original is removed).
    Returns the packed files. How the shipped models are stored; ready_model_dir undoes it."""
    out = []
    for plain in sorted(Path(folder).glob("*.safetensors")):
        data = plain.read_bytes()
        packed = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6)
        if hashlib.sha256(lzma.decompress(packed)).digest() != hashlib.sha256(data).digest():
            raise RuntimeError(f"{plain}: the packed bytes do not decompress to the original; nothing was replaced")
        dest = plain.with_name(plain.name + ".xz")
        tmp = plain.with_name(plain.name + ".xz.tmp")
        tmp.write_bytes(packed)
        tmp.replace(dest)
        plain.unlink()
        out.append(dest)
    return out


def _shipped_cache(folder: Path) -> Path:
    """cache_root()/shipped, created (with cache_root() itself unless $DLLM_CACHE_HOME names it)."""
    root = cache_root()
    hint = (f"Set ${CACHE_ENV} to an existing writable folder (the packed weights of {folder} are unpacked there, "
            f"~{sum(p.stat().st_size for p in folder.glob('*' + PACKED_SUFFIX)) * 1.5 / 1e6:.0f} MB).")
    if os.environ.get(CACHE_ENV) and not root.is_dir():
        raise CacheDirError(f"${CACHE_ENV}={root} does not exist (or is not a folder). {hint}")
    shipped = root / "shipped"
    try:
        shipped.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheDirError(f"cannot create the unpack cache {shipped} ({err.strerror or err}). {hint}") from None
    return shipped


def _content_key(folder: Path) -> str:
    """16 hex digits of the sha256 of the folder's files (names and bytes): a changed model gets a
    new cache folder. Hashed once per process per folder state (~0.1 s for the shipped LLaDA)."""
    files = sorted(f for f in folder.iterdir() if f.is_file())
    state = (str(folder.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if state not in _KEYS:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f.name}\0{f.stat().st_size}\0".encode())
            with open(f, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        _KEYS[state] = digest.hexdigest()[:16]
    return _KEYS[state]


def _unpack(folder: Path, packed: list[Path], target: Path) -> Path:
    """Write the ready copy of `folder` into a temporary folder beside `target`, then rename it to
    `target`. Losing the race to another process (target already there) is fine: its copy is the same."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as err:
        raise CacheDirError(f"the unpack cache {target.parent} is not writable ({err.strerror or err}). Set ${CACHE_ENV} "
                            "to an existing writable folder.") from None
    try:
        for f in folder.iterdir():
            if f.is_file() and not f.name.endswith(PACKED_SUFFIX):
                shutil.copy2(f, tmp / f.name)  # config, tokenizer, shard index, any shard already unpacked beside
        for p in packed:
            plain = tmp / p.name[: -len(".xz")]
            if not plain.exists():
                with lzma.open(p) as src, open(plain, "wb") as dst:  # lzma checks the CRC64 of the data
                    shutil.copyfileobj(src, dst, 1 << 20)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0o700
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return target


def default_prompts_file() -> Path:
    """Held-out arithmetic problems, one JSON object per line: {"question", "answer"}."""
    return _first_existing(
        "prompt file",
        _PACKAGE / "default_data" / "test.jsonl",
        _CHECKOUT / "eval" / "data" / "arith_synth" / "test.jsonl",
    )


def arith_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def final_number(text: str) -> str | None:
    """The number after '####' (or else the last number) in `text`, without leading zeros."""
    if "####" in text:
        m = re.search(r"-?\d+", text.split("####", 1)[1])
        if m:
            return m.group(0).lstrip("0") or "0"
    found = re.findall(r"-?\d+", text)
    return (found[-1].lstrip("0") or "0") if found else None


def is_correct(generated: str, answer: str) -> bool:
    """The generated final number equals the reference's."""
    pred = final_number(generated)
    return pred is not None and pred == final_number(answer)
