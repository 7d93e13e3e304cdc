"""Chat messages -> prompt ids with the model's chat template: the Jinja template shipped with the tokenizer
(chat_template.jinja or tokenizer_config.json) when there is one, else Gemma's turn format when the vocabulary
has it, else plain `role: text` lines."""

from __future__ import annotations

import json
from pathlib import Path


def load_template(folder: str | Path) -> str | None:
    folder = Path(folder)
    if not folder.is_dir():
        return None
    f = folder / "chat_template.jinja"
    if f.exists():
        return f.read_text()
    cfg = folder / "tokenizer_config.json"
    if cfg.exists():
        t = json.loads(cfg.read_text()).get("chat_template")
        if isinstance(t, str):
            return t
    return None


class ChatFormatter:
    def __init__(self, tokenizer, template: str | None = None) -> None:
        self.tok = tokenizer
        self.template = None
        if template:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(msg):
                raise ValueError(f"chat template: {msg}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self.template = env.from_string(template)
        self.gemma = tokenizer.token_id("<start_of_turn>") is not None

    def ids(self, messages: list[tuple[str, str]]) -> list[int]:
        """[(role, text)] -> prompt ids ending with the assistant's generation prompt."""
        if self.template is not None:
            bos = decode_special(self.tok, self.tok.bos_id)
            text = self.template.render(messages=[{"role": r, "content": c} for r, c in messages],
                                        add_generation_prompt=True, bos_token=bos, eos_token="")
            return self.tok.encode(text, add_bos=not (bos and text.startswith(bos)))
        if self.gemma:
            turns, system = [], ""
            for role, text in messages:
                if role in ("system", "developer"):
                    system += text + "\n\n"
                    continue
                role = "model" if role in ("assistant", "model") else "user"
                if role == "user" and system:
                    text, system = system + text, ""
                turns.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
            return self.tok.encode("".join(turns) + "<start_of_turn>model\n")
        return self.tok.encode("".join(f"{r}: {t}\n" for r, t in messages) + "assistant:")


def decode_special(tok, token_id: int | None) -> str:
    """The vocabulary string of a (special) token, e.g. '<bos>'; '' when unknown."""
    if token_id is None:
        return ""
    fast = getattr(tok, "_tok", None)  # io.tokenizer.Tokenizer wraps a `tokenizers` tokenizer
    return (fast.id_to_token(token_id) if fast is not None else None) or ""
