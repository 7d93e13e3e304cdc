"""Cache files that survive interruption and concurrency: file locks, unique temporary paths renamed into place,
content fingerprints and manifests checked on load, safe names and paths under the cache, safe torch loading.

Every cache writer in leaninfer follows one pattern:

    with file_lock(entry):             # one writer per entry (fcntl; released when the process dies)
        if entry is complete: return   # another process may have finished it while we waited
        tmp = unique_tmp(entry)        # never shared between writers
        ... write into tmp ...
        publish(tmp, entry)            # atomic rename; an old or damaged entry is replaced

A fingerprint is content-based and cheap: blake2b over the size, the first and last MiB and 32 windows of
64 KiB spread over the file. It catches truncation, a file replaced by another and any overwrite that touches
a sampled window (a header, a tensor table); `manifest` stores one per file and `check_manifest` verifies them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_EDGE = 1 << 20  # bytes hashed at each end of a file
_WINDOW, _N_WINDOWS = 1 << 16, 32
MANIFEST = "manifest.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def fingerprint(path: str | Path) -> str:
    """A content fingerprint of a file: size + first/last MiB + 32 sampled 64 KiB windows (blake2b, 32 hex)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= 2 * _EDGE + _N_WINDOWS * _WINDOW:
            h.update(f.read())
        else:
            h.update(f.read(_EDGE))
            span = size - 2 * _EDGE - _WINDOW
            for i in range(_N_WINDOWS):
                f.seek(_EDGE + span * i // (_N_WINDOWS - 1))
                h.update(f.read(_WINDOW))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()


def write_manifest(folder: Path, files: dict[str, Path] | None = None, name: str = MANIFEST, **extra) -> dict:
    """Record size + fingerprint of `files` ({recorded name: file}; default: every file of `folder`) in
    folder/`name`, plus `extra` fields."""
    folder = Path(folder)
    if files is None:
        files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.name != name}
    meta = {"files": {n: {"size": Path(f).stat().st_size, "hash": fingerprint(f)} for n, f in files.items()},
            **extra}
    atomic_write_text(folder / name, json.dumps(meta, indent=1))
    return meta


def check_manifest(folder: Path, name: str = MANIFEST) -> str | None:
    """None when every file listed in folder/`name` has its recorded size and fingerprint, else why not."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / name).read_text())
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {name}"
    for name, want in files.items():
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != want["size"]:
            return f"{name} has {f.stat().st_size} bytes, expected {want['size']}"
        if fingerprint(f) != want["hash"]:
            return f"{name} does not match its recorded fingerprint"
    return None


def read_manifest(folder: Path, name: str = MANIFEST) -> dict:
    try:
        return json.loads((Path(folder) / name).read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def file_lock(entry: str | Path, blocking: bool = True) -> Iterator[bool]:
    """Exclusive lock on `.locks/<entry name>.lock` beside `entry` (the kernel releases it if the process dies).

    Yields True when held; with blocking=False yields False at once when another process holds it."""
    entry = Path(entry)
    lock = entry.parent / ".locks" / (entry.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def unique_tmp(entry: str | Path, folder: bool = False) -> Path:
    """A temporary sibling of `entry` that no other writer uses (pid + random); a folder when `folder`."""
    entry = Path(entry)
    tmp = entry.with_name(f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if folder:
        tmp.mkdir(parents=True)
    else:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def publish(tmp: Path, entry: Path) -> Path:
    """Rename a finished temporary file or folder into place (replacing an old entry); call under the lock."""
    tmp, entry = Path(tmp), Path(entry)
    if tmp.is_dir() and entry.exists():
        old = unique_tmp(entry)
        entry.rename(old)  # the swap is two renames; the old entry is deleted after the new one is in place
        tmp.rename(entry)
        remove(old)
    else:
        os.replace(tmp, entry)
    return entry


def remove(path: str | Path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def writing(entry: str | Path, folder: bool = False) -> Iterator[Path]:
    """A unique temporary path for `entry`, published on success and removed on failure (caller holds the lock)."""
    tmp = unique_tmp(entry, folder)
    try:
        yield tmp
        publish(tmp, Path(entry))
    finally:
        if tmp.exists():
            remove(tmp)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with writing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_torch_save(obj, path: str | Path) -> Path:
    import torch

    with writing(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def safe_torch_load(path: str | Path, map_location="cpu", safe_globals: list | None = None):
    """`torch.load` with `weights_only=True`: tensors and plain containers only, never code from the file.

    `safe_globals` allow-lists our own plain data classes. A file that needs anything else raises ValueError."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(list(safe_globals or [])):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" (it asks for {found.group(1)})" if found else ""
        raise ValueError(f"{path} holds more than tensors and plain data{what}; refusing to unpickle it: "
                         "leaninfer never runs code from files") from None


def check_name(name: str, what: str = "name") -> str:
    """A cache entry name: letters, digits, '.', '_', '-' (no separators, no '..', not hidden), at most 128."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' (no path separators, "
                         "no '..', not starting with '.')")
    return name


def inside(root: Path, path: Path) -> Path:
    """`path` resolved, checked to lie inside `root` (ValueError otherwise)."""
    root, resolved = Path(root).resolve(), Path(path).resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"{path} is outside {root}")
    return resolved


def prune_stale_tmps(folder: Path, max_age_s: float = 3600.0) -> int:
    """Remove leftovers of interrupted writers in `folder`: `.NAME.tmp-*` older than `max_age_s` whose entry is
    not locked by a live writer (and pre-lock `NAME.tmp` folders). Returns how many were removed."""
    folder, n = Path(folder), 0
    if not folder.is_dir():
        return 0
    now = time.time()
    for p in folder.iterdir():
        m = re.match(r"^\.(.+)\.tmp-\d+-[0-9a-f]{8}$", p.name)
        legacy = p.name.endswith(".tmp") and p.is_dir()
        if not (m or legacy) or p.name == ".locks":
            continue
        try:  # young leftovers may belong to a writer that takes no lock (older leaninfer versions)
            if now - p.stat().st_mtime < max_age_s:
                continue
        except FileNotFoundError:
            continue
        entry = folder / (m.group(1) if m else p.name[: -len(".tmp")])
        with file_lock(entry, blocking=False) as held:
            if held:
                remove(p)
                n += 1
    return n
