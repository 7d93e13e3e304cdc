"""Eviction scorers ("presses"), one per file, one interface (`base.Press`)."""

from leaninfer.cache.press.base import Press
from leaninfer.cache.press.keydiff import KeyDiffPress
from leaninfer.cache.press.kvzip import KVzipPress, repeat_prompt_ids
from leaninfer.cache.press.pyramid import PyramidKVPress
from leaninfer.cache.press.snapkv import SnapKVPress
from leaninfer.cache.press.streaming import StreamingLLMPress

PRESSES = {p.name: p for p in (StreamingLLMPress, SnapKVPress, PyramidKVPress, KeyDiffPress, KVzipPress)}



def make_press(name: str, tokenizer=None, headwise: bool = False, sinks: int = 0) -> Press:
    """A baseline press by name (KVzip needs the tokenizer for its repeat prompt); `sinks` first positions are
    never evicted."""
    if name not in PRESSES:
        raise ValueError(f"unknown press {name!r}; available: {', '.join(sorted(PRESSES))}")
    if name == "kvzip":
        if tokenizer is None:
            raise ValueError("kvzip needs a tokenizer")
        return KVzipPress(headwise=headwise, sinks=sinks, prefix_ids=repeat_prompt_ids(tokenizer))
    return PRESSES[name](headwise=headwise, sinks=sinks)


__all__ = ["PRESSES", "KVzipPress", "KeyDiffPress", "Press", "PyramidKVPress", "SnapKVPress", "StreamingLLMPress",
           "make_press"]
