"""The shipped weights are tracked packed (`*.safetensors.xz`) and loaded from an unpacked copy in a
per-user cache (dllm_cache.shipped.ready_model_dir; issue 24, item 5: the tracked tree at 45 MiB).

What could go wrong, and is checked here: the unpacked copy differs from the archive (a truncated or
stale cache), a second load unpacks again (seconds per process, and two processes racing over one
folder), a changed model reuses an old copy, a process that loses the race to another fails, and a
bad cache folder gives a traceback from deep inside tempfile instead of a message naming the setting.
"""

from __future__ import annotations

import hashlib
import lzma
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dllm_cache import shipped

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "eval" / "tiny" / "model", REPO / "eval" / "tiny" / "dream_model"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def packed_folder(tmp_path, monkeypatch) -> tuple[Path, dict[str, bytes]]:
    """A small model-like folder (two shards, config, index) packed with shipped.pack, a fresh cache
    in $DLLM_CACHE_HOME, and the original shard bytes by name."""
    folder = tmp_path / "model"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    originals = {}
    for i in (1, 2):
        name = f"model-0000{i}-of-00002.safetensors"
        save_file({f"w{i}": torch.randn(64, 32, generator=gen).to(torch.bfloat16)}, str(folder / name))
        originals[name] = (folder / name).read_bytes()
    (folder / "config.json").write_text('{"model_type": "llada"}')
    (folder / "model.safetensors.index.json").write_text("{}")
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(shipped.CACHE_ENV, str(cache))
    packed = shipped.pack(folder)
    assert [p.name for p in packed] == [n + ".xz" for n in sorted(originals)]
    return folder, originals


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_shipped_weights_unpack_to_their_archives(folder):
    """The ready copy of each shipped model holds exactly what a fresh decompression of its archives
    gives, and every other file of the folder unchanged."""
    archives = sorted(folder.glob("*" + shipped.PACKED_SUFFIX))
    if not archives:
        pytest.skip(f"{folder} holds plain safetensors (not packed): nothing to unpack")
    assert not list(folder.glob("*.safetensors")), "packed and plain shards side by side: the plain ones would win"
    ready = shipped.ready_model_dir(folder)
    assert ready != folder and ready.parent.name == "shipped"
    for archive in archives:
        plain = ready / archive.name[: -len(".xz")]
        assert sha256(plain.read_bytes()) == sha256(lzma.decompress(archive.read_bytes())), plain
    others = sorted(f.name for f in folder.iterdir() if f.is_file() and not f.name.endswith(shipped.PACKED_SUFFIX))
    assert {"config.json", "tokenizer.json"} <= set(others)
    for name in others:
        assert (ready / name).read_bytes() == (folder / name).read_bytes(), name


def test_pack_is_lossless_and_a_second_call_does_not_unpack(packed_folder, monkeypatch):
    folder, originals = packed_folder
    assert not list(folder.glob("*.safetensors")), "pack leaves only the archives"
    ready = shipped.ready_model_dir(folder)
    assert ready.parent == Path(shipped.cache_root()) / "shipped" and ready.name.startswith("model-")
    for name, data in originals.items():
        assert (ready / name).read_bytes() == data, name
    assert load_file(str(ready / "model-00001-of-00002.safetensors"))["w1"].dtype == torch.bfloat16
    assert (ready / "config.json").read_text() == '{"model_type": "llada"}'

    def no_unpack(*args, **kwargs):
        raise AssertionError("unpacked again although the ready folder exists")

    monkeypatch.setattr(shipped.lzma, "open", no_unpack)
    shipped._KEYS.clear()  # as a new process would start: no remembered hash
    assert shipped.ready_model_dir(folder) == ready
    assert [p.name for p in ready.parent.iterdir()] == [ready.name], "no temporary folder left behind"


def test_a_changed_model_gets_a_fresh_copy(packed_folder):
    folder, _ = packed_folder
    first = shipped.ready_model_dir(folder)
    (folder / "config.json").write_text('{"model_type": "llada", "changed": true}')
    second = shipped.ready_model_dir(folder)
    assert second != first and "changed" in (second / "config.json").read_text()


def test_losing_the_race_to_another_process_is_fine(packed_folder):
    """Two processes that both find no ready folder both unpack; the second rename fails on the
    complete folder the first put there, and the second process uses that one."""
    folder, originals = packed_folder
    target = shipped.ready_model_dir(folder)
    packed = sorted(folder.glob("*" + shipped.PACKED_SUFFIX))
    assert shipped._unpack(folder, packed, target) == target  # as the slower racer does
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    for name, data in originals.items():
        assert (target / name).read_bytes() == data


def test_plain_folders_and_missing_paths_come_back_as_is(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert shipped.ready_model_dir(tmp_path) == tmp_path
    assert shipped.ready_model_dir(tmp_path / "nope") == tmp_path / "nope"


def test_a_bad_cache_folder_is_a_clear_error(packed_folder, monkeypatch, tmp_path):
    folder, _ = packed_folder
    monkeypatch.setenv(shipped.CACHE_ENV, str(tmp_path / "missing"))
    with pytest.raises(shipped.CacheDirError, match=r"\$DLLM_CACHE_HOME=.*missing does not exist"):
        shipped.ready_model_dir(folder)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(shipped.CACHE_ENV, str(blocker))  # exists but is no folder: nothing can be written under it
    with pytest.raises(shipped.CacheDirError, match=r"DLLM_CACHE_HOME"):
        shipped.ready_model_dir(folder)


def test_lm_eval_loads_a_packed_folder_by_path():
    """`--model_args pretrained=eval/tiny/model` (a packed folder, as the lab's scripts pass it) loads
    its unpacked copy instead of failing on a folder without safetensors."""
    pytest.importorskip("lm_eval")
    from dllm_cache.integrations.lm_eval.model import DLLMCacheLM

    if not list(SHIPPED[0].glob("*" + shipped.PACKED_SUFFIX)):
        pytest.skip(f"{SHIPPED[0]} is not packed")
    lm = DLLMCacheLM(pretrained=str(SHIPPED[0]), device="cpu", gen_length="8", steps="8")
    assert lm.model.config.name_or_path == str(shipped.ready_model_dir(SHIPPED[0]))
