"""Tokenizer: a `tokenizers` fast tokenizer (tokenizer.json) plus BOS/EOS ids.

For GGUF files the tokenizer.json is built once from the GGUF vocabulary by `transformers`' converter and
cached next to the converted weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from leaninfer.io import ModelLoadError


class Tokenizer:
    def __init__(self, path: Path, bos_id: int | None = None, eos_ids: list[int] | None = None) -> None:
        from tokenizers import Tokenizer as FastTokenizer

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.exists():
            raise ModelLoadError(f"no tokenizer.json at {path}")
        self._tok = FastTokenizer.from_file(str(file))
        self.bos_id = bos_id
        self.eos_ids = list(eos_ids or [])
        self._adds_bos = bos_id is not None and self._tok.encode("a").ids[:1] == [bos_id]

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Text -> ids; with `add_bos` the sequence starts with BOS (as `transformers` does)."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


def tokenizer_from_hf_dir(path: Path) -> Tokenizer:
    """Tokenizer of an HF folder: tokenizer.json plus BOS/EOS from config files."""
    path = Path(path)
    bos, eos = None, []
    for name in ("generation_config.json", "config.json", "tokenizer_config.json"):
        f = path / name
        if f.exists():
            d = json.loads(f.read_text())
            bos = bos if bos is not None else d.get("bos_token_id")
            e = d.get("eos_token_id")
            eos = eos or ([e] if isinstance(e, int) else list(e or []))
    return Tokenizer(path, bos, eos)


def write_tokenizer_from_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Build tokenizer.json from a GGUF vocabulary (transformers' converter) into out_dir."""
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as e:
        raise ModelLoadError(f"cannot build a tokenizer from {gguf_path}: {e}") from e
    tok.save_pretrained(str(out_dir))
