"""The project's own prompt list for self-distillation (no external chat data is reachable here, and the
Spec-Bench questions are kept for evaluation only). Prompts are built from topic x task templates."""

from __future__ import annotations

import random

TOPICS = [
    "the water cycle", "a small bakery", "volcanoes", "the history of printing", "learning a new language",
    "black holes", "a city park in autumn", "electric cars", "the human heart", "ancient Rome", "honeybees",
    "a job interview", "climate and weather", "chess openings", "the stock market", "photosynthesis",
    "a train journey", "machine learning", "the ocean floor", "a birthday party", "vaccines", "the moon landing",
    "recycling", "a mountain village", "jazz music", "the internet", "sleep", "desert animals", "a museum visit",
    "renewable energy", "the French Revolution", "friendship", "a rainy afternoon", "bridges", "coffee",
    "earthquakes", "a science fair", "the Olympic games", "rainforests", "time management", "a lost wallet",
    "the printing press", "robots", "gardening", "the solar system", "a football match", "public libraries",
    "healthy breakfast", "glaciers", "a fairy tale king", "smartphones", "the Great Wall", "marathon training",
]
TASKS = [
    "Write a short story about {t}.", "Explain {t} to a ten-year-old.", "List five facts about {t}.",
    "Write a paragraph describing {t}.", "What are the pros and cons of {t}?", "Write a poem about {t}.",
    "Summarise what people should know about {t}.", "Describe a typical day involving {t}.",
    "Write an email to a friend about {t}.", "Give step-by-step advice related to {t}.",
    "Write a news report about {t}.", "Answer the question: why does {t} matter?",
]


def build_prompts(n: int, seed: int = 0) -> list[str]:
    """n distinct prompts (topic x task), shuffled deterministically; formatted like the evaluation prompts."""
    pairs = [(t, k) for t in TOPICS for k in TASKS]
    if n > len(pairs):
        raise ValueError(f"at most {len(pairs)} distinct prompts, asked for {n}")
    random.Random(seed).shuffle(pairs)
    return [f"Question: {task.format(t=topic)}\nAnswer:" for topic, task in pairs[:n]]
