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


CODE_TASKS = [
    "reverses a string", "checks whether a number is prime", "counts the vowels in a sentence",
    "returns the n-th Fibonacci number", "merges two sorted lists", "removes duplicates from a list",
    "computes the factorial of n", "finds the largest element of a list", "checks whether a word is a palindrome",
    "converts Celsius to Fahrenheit", "reads a CSV file and sums a column", "counts word frequencies in a text",
    "sorts a list of dictionaries by a key", "flattens a nested list", "computes the average of a list of numbers",
    "validates an email address", "finds the greatest common divisor of two numbers", "transposes a matrix",
    "implements binary search", "groups a list of words by their first letter",
]
LANGUAGES = ["German", "French", "Spanish", "Italian", "Chinese", "Japanese"]
QUESTIONS = ["What is the main idea of the passage?", "Which details support the main point?",
             "What could happen next?", "Who would find this text useful, and why?",
             "What is one question the passage leaves open?"]
NAMES = ["Mia", "Tom", "Aisha", "Carlos", "Lena", "Ravi", "Sofia", "Ken"]
ITEMS = [("apples", 3), ("books", 12), ("tickets", 25), ("pencils", 2), ("shirts", 18), ("plants", 7)]


def _math_prompt(rng: random.Random) -> str:
    name, (item, price) = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, pct = rng.randint(2, 40), rng.randint(2, 15), rng.choice([10, 20, 25, 50])
    forms = [
        f"{name} buys {a} {item} at ${price} each and pays with a ${(a * price // 50 + 1) * 50} bill. "
        "How much change does "
        f"{name} get?",
        f"{name} has {a} {item}. {name} gives away {b} and then buys {pct} percent more than what is left. "
        f"How many {item} does {name} have now?",
        f"A shop sells {item} for ${price}. On Monday it sells {a} and on Tuesday {b} more than on Monday. "
        "How much money does it make in the two days?",
        f"What is {a * b} divided by {b}, plus {a + pct}?",
        f"A rectangle is {a} cm long and {b} cm wide. What are its area and its perimeter?",
    ]
    return rng.choice(forms)


def derived_prompts(passages: list[str], seed: int = 0) -> list[str]:
    """Second-stage prompts built from the target's own first-stage outputs (summarise, translate, answer
    questions about a passage), plus procedural maths word problems and small coding tasks, so the draft
    sees the task types of the evaluation set without training on its questions."""
    rng = random.Random(seed)
    out = []
    for p in passages:
        p = p.strip()
        if len(p) < 40:
            continue
        first = p.split(". ")[0].strip().rstrip(".") + "."
        kind = rng.randrange(4)
        if kind == 0:
            task = f"Summarize: {p}"
        elif kind == 1:
            task = f"Translate English to {rng.choice(LANGUAGES)}: {first}"
        elif kind == 2:
            task = f"{p}\n\nBased on the text above: {rng.choice(QUESTIONS)}"
        else:
            task = f"Rewrite the following text in simpler words: {p}"
        out.append(task)
    out += [_math_prompt(rng) for _ in range(len(passages) // 3)]
    out += [f"Write a Python function that {t}." for t in CODE_TASKS]
    rng.shuffle(out)
    return [f"Question: {t}\nAnswer:" for t in out]
