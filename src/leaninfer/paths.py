"""Where leaninfer keeps things: the user cache (converted weights, drafts, built data) and reports."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir(*parts: str, create: bool = True) -> Path:
    """User cache directory (LEANINFER_CACHE, else $XDG_CACHE_HOME/leaninfer, else ~/.cache/leaninfer);
    sub-folders are created on demand unless `create=False` (lookups)."""
    root = Path(os.environ.get("LEANINFER_CACHE") or platformdirs.user_cache_dir("leaninfer"))
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data(*parts: str) -> Path:
    """The read-only shared data folder beside the repository (`../shared/data`), or LEANINFER_SHARED_DATA."""
    env = os.environ.get("LEANINFER_SHARED_DATA")
    if env:
        return Path(env).joinpath(*parts)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate.joinpath(*parts)
    return Path.cwd().parent.joinpath("shared", "data", *parts)


def reports_dir() -> Path:
    """`reports/` of the repository when run from a checkout, else of the working directory."""
    path = Path(os.environ.get("LEANINFER_REPORTS") or (Path.cwd() / "reports"))
    path.mkdir(parents=True, exist_ok=True)
    return path
