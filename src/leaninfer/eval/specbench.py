"""Spec-Bench questions (first turn of each question; categories kept).

The file is not copied into the repository: the default path points at `../shared/data/spec_bench`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from leaninfer.paths import shared_data


@dataclass(frozen=True)
class Question:
    question_id: int
    category: str
    text: str


def default_questions_path() -> Path:
    return shared_data("spec_bench", "question.jsonl")


def load_questions(path: Path | None = None, per_category: int | None = None) -> list[Question]:
    """Read Spec-Bench questions; `per_category` keeps the first N of each category (file order)."""
    path = Path(path) if path else default_questions_path()
    if not path.is_file():
        raise FileNotFoundError(f"Spec-Bench question file not found: {path} (pass --questions PATH)")
    out: list[Question] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            q = Question(int(d["question_id"]), str(d["category"]), str(d["turns"][0]))
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            raise ValueError(f"{path}:{line_no}: not a Spec-Bench question ({e})") from e
        if per_category is not None and seen.get(q.category, 0) >= per_category:
            continue
        seen[q.category] = seen.get(q.category, 0) + 1
        out.append(q)
    return out


def format_prompt(question: Question) -> str:
    """Plain completion format for the (pretrained, not chat-tuned) default model."""
    return f"Question: {question.text}\nAnswer:"
