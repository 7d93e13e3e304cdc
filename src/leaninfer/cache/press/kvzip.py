"""KVzip (Kim et al., arXiv:2505.23416): context reconstruction scoring. After each block, a prompt that asks
the model to repeat the context, followed by the block's tokens, is run for scoring only; each cached entry
scores the maximum attention any prompt query (and any query head of its KV group) pays to it."""

from __future__ import annotations

from dataclasses import dataclass, field

from leaninfer.cache.press.base import Press, require_attn


@dataclass
class KVzipPress(Press):
    prefix_ids: list[int] = field(default_factory=list)  # the encoded repeat instruction (chat-formatted)
    suffix_ids: list[int] = field(default_factory=list)

    name = "kvzip"

    def __post_init__(self) -> None:
        if not self.prefix_ids:
            raise ValueError("KVzipPress needs the encoded repeat prompt (prefix_ids)")

    def scoring_prompt(self, block_ids):
        return list(self.prefix_ids) + list(block_ids) + list(self.suffix_ids)

    def score(self, cache, layer, attn):
        return [a.float() for a in require_attn(self.name, attn)]


REPEAT = "Repeat the previous context exactly."


def repeat_prompt_ids(tokenizer) -> list[int]:
    """The repeat instruction as a new user turn + model header (the history is an open user turn)."""
    if tokenizer.token_id("<start_of_turn>") is not None:
        text = f"<end_of_turn>\n<start_of_turn>user\n{REPEAT}<end_of_turn>\n<start_of_turn>model\n"
    else:
        text = f"\n\n{REPEAT}\n"
    return tokenizer.encode(text, add_bos=False)
