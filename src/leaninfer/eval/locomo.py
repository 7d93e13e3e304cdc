"""LoCoMo long-conversation QA (Maharana et al., ACL 2024; data CC BY-NC 4.0, read from ../shared/data/locomo).

Loading (optionally the first `max_sessions` sessions only, keeping the questions whose evidence lies in them),
the history text and question prompts in the format EpiCache uses (Gemma chat turns when the vocabulary has
them), and SQuAD-style token F1.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from leaninfer.paths import shared_data

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
QUERY = "Answer the question about the conversation above in a few words.{hint}\nQuestion: {q}"
TEMPORAL = " Use the DATE of the conversation to answer with an approximate date."
# Gemma 3 270M answers when the question is its own user turn after the history; asked inside the history's
# turn (EpiCache's layout) it copies the history's first line instead (measured on LoCoMo, see docs/kv.md).
CHAT_OPEN, CHAT_NEXT = "<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>user\n"
CHAT_MODEL = "<end_of_turn>\n<start_of_turn>model\n"


def default_path() -> Path:
    return shared_data("locomo", "locomo7.json")


@dataclass
class QA:
    question: str
    answer: str
    category: int
    evidence: list[str]


@dataclass
class Session:
    date: str
    utterances: list[str]  # 'Speaker said, "text"\n'


@dataclass
class Conversation:
    sample_id: str
    speakers: tuple[str, str]
    sessions: list[Session]
    questions: list[QA] = field(default_factory=list)

    @property
    def utterances(self) -> list[str]:
        return [u for s in self.sessions for u in s.utterances]


def _utterance(turn: dict) -> str:
    text = turn["text"].strip()
    if turn.get("blip_caption"):
        text += f" [shared a photo: {turn['blip_caption']}]"
    return f'{turn["speaker"]} said, "{text}"\n'


def _session_of(dia_id: str) -> int | None:
    m = re.match(r"D(\d+):", dia_id.strip())
    return int(m.group(1)) if m else None


def load_locomo(path: Path | str | None = None, conversations: int | None = None,
                max_sessions: int | None = None) -> list[Conversation]:
    """Conversations with their category 1-4 questions (category 5, adversarial, is left out as in EpiCache).

    max_sessions keeps the first N sessions and only questions whose evidence all lies in them."""
    path = Path(path) if path else default_path()
    if not path.exists():
        raise FileNotFoundError(f"LoCoMo data not found at {path}")
    out = []
    for raw in json.loads(path.read_text())[:conversations]:
        conv = raw["conversation"]
        sessions, i = [], 1
        while f"session_{i}" in conv and (max_sessions is None or i <= max_sessions):
            turns = [_utterance(t) for t in conv[f"session_{i}"]]
            sessions.append(Session(conv.get(f"session_{i}_date_time", ""), turns))
            i += 1
        kept = len(sessions)
        qas = []
        for q in raw["qa"]:
            if q.get("category") not in CATEGORIES or "answer" not in q:
                continue
            ev = [_session_of(e) for x in q.get("evidence", []) for e in str(x).split(";")]
            if not ev or any(s is None or s > kept for s in ev):
                continue
            qas.append(QA(q["question"], str(q["answer"]), int(q["category"]), [str(e) for e in q["evidence"]]))
        out.append(Conversation(raw["sample_id"], (conv["speaker_a"], conv["speaker_b"]), sessions, qas))
    return out


def history_text(conv: Conversation) -> str:
    a, b = conv.speakers
    parts = [f"Below is a conversation between two people: {a} and {b}. The conversation takes place over "
             f"multiple days and the date of each conversation is written at the beginning of the conversation.\n"]
    for s in conv.sessions:
        parts.append(f"\nDATE: {s.date}\nCONVERSATION:\n" + "".join(s.utterances))
    return "".join(parts)


def _chat(tokenizer) -> bool:
    return tokenizer.token_id("<start_of_turn>") is not None


def history_ids(tokenizer, conv: Conversation) -> list[int]:
    """BOS + (user-turn header) + the history; the question prompt continues it."""
    return tokenizer.encode((CHAT_OPEN if _chat(tokenizer) else "") + history_text(conv))


def question_ids(tokenizer, qa: QA) -> list[int]:
    """The question as a new user turn after the history, then the model-turn header."""
    text = QUERY.format(q=qa.question, hint=TEMPORAL if qa.category == 2 else "")
    text = CHAT_NEXT + text + CHAT_MODEL if _chat(tokenizer) else f"\n\n{text}\nAnswer:"
    return tokenizer.encode(text, add_bos=False)


def clean_answer(text: str) -> str:
    """The first non-empty line, without a leading 'Answer:'."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*answer\s*:\s*", "", line.strip(), flags=re.I)
        if line:
            return line
    return ""


_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def normalize(text: str) -> list[str]:
    """Lower case, no punctuation / articles / 'and', number words as digits, split on whitespace."""
    text = text.lower().replace(",", " ")
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the|and)\b", " ", text)
    return [_NUMBERS.get(t, t) for t in text.split()]


def f1_score(prediction: str, reference: str) -> float:
    """Token-level F1 after `normalize` (1.0 when both are empty)."""
    p, r = normalize(prediction), normalize(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)
