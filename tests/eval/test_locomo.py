"""LoCoMo loading (session limits keep only answerable questions), prompts and F1."""

import json

import pytest

from leaninfer.eval.locomo import clean_answer, f1_score, history_text, load_locomo, normalize


def _write(tmp_path):
    conv = {"speaker_a": "Ann", "speaker_b": "Bob",
            "session_1_date_time": "1 May 2023", "session_1": [
                {"speaker": "Ann", "dia_id": "D1:1", "text": "I adopted a cat."},
                {"speaker": "Bob", "dia_id": "D1:2", "text": "Nice!", "blip_caption": "a photo of a cat"}],
            "session_2_date_time": "9 May 2023", "session_2": [
                {"speaker": "Ann", "dia_id": "D2:1", "text": "I moved to Oslo."}]}
    qa = [{"question": "What did Ann adopt?", "answer": "a cat", "evidence": ["D1:1"], "category": 4},
          {"question": "Where did Ann move?", "answer": "Oslo", "evidence": ["D2:1"], "category": 4},
          {"question": "Trick?", "adversarial_answer": "x", "evidence": ["D1:1"], "category": 5},
          {"question": "When?", "answer": 2023, "evidence": ["D1:1", "D2:1"], "category": 2}]
    path = tmp_path / "loc.json"
    path.write_text(json.dumps([{"sample_id": "c1", "conversation": conv, "qa": qa}]))
    return path


def test_load_and_session_limit(tmp_path):
    path = _write(tmp_path)
    (c,) = load_locomo(path)
    assert [q.question for q in c.questions] == ["What did Ann adopt?", "Where did Ann move?", "When?"]
    assert c.questions[2].answer == "2023" and len(c.utterances) == 3
    (c1,) = load_locomo(path, max_sessions=1)
    assert [q.question for q in c1.questions] == ["What did Ann adopt?"]
    text = history_text(c1)
    assert "DATE: 1 May 2023" in text and 'Bob said, "Nice! [shared a photo: a photo of a cat]"' in text
    assert "Oslo" not in text
    with pytest.raises(FileNotFoundError):
        load_locomo(tmp_path / "missing.json")


def test_f1_and_cleaning():
    assert normalize("The two Cats, and a dog!") == ["2", "cats", "dog"]
    assert f1_score("a cat", "The cat") == 1.0
    assert f1_score("7 May 2023", "1:56 pm on 8 May, 2023") == pytest.approx(2 * (2 / 3) * (2 / 6) / (2 / 3 + 2 / 6))
    assert f1_score("", "") == 1.0 and f1_score("x", "") == 0.0 and f1_score("dog", "cat") == 0.0
    assert clean_answer("\nAnswer: Oslo\nQuestion: more") == "Oslo"
