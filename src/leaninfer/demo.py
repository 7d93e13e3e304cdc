"""The main job (`leaninfer demo`): load the default model, generate for a handful of prompts with the fastest
exact method available, and compare against plain decoding at the same (default) precision. It grows as
capabilities land."""

from __future__ import annotations

from dataclasses import dataclass

DEMO_PROMPTS = [
    "The three primary colours are",
    "Question: What is the boiling point of water at sea level?\nAnswer:",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Translate to French: 'Good morning, how are you?'\nFrench:",
    "Once upon a time, in a small village by the sea,",
]


@dataclass
class DemoRow:
    prompt: str
    text: str
    method: str
    precision: str
    tokens_per_s: float
    baseline_tokens_per_s: float
    same_as_baseline: bool

    @property
    def speedup(self) -> float:
        return self.tokens_per_s / self.baseline_tokens_per_s


LOSSLESS_METHODS = ("ar", "ngram")  # methods that need no trained draft
DRAFTED_METHODS = ("eagle", "hydra", "medusa")  # used when `leaninfer draft train` has built their drafts


def candidate_methods(engine) -> list[str]:
    from leaninfer.io.drafts import DraftNotFoundError

    found = []
    for kind in DRAFTED_METHODS:
        try:
            engine.draft(kind)
            found.append(kind)
        except DraftNotFoundError:
            pass
    return [*LOSSLESS_METHODS, *found]


def fastest_method(engine, prompt: str = DEMO_PROMPTS[1], max_new_tokens: int = 32) -> tuple[str, dict]:
    """Measure each training-free method on a calibration prompt; return the fastest whose output equals plain
    decoding there (low-precision kernels can round differently for multi-token verification), and the
    measured tokens/s of each."""
    speeds, ref = {}, None
    for method in candidate_methods(engine):
        engine.generate(prompt, max_new_tokens=4, method=method)  # warm-up
        out = engine.generate(prompt, max_new_tokens=max_new_tokens, method=method)
        ref = out.token_ids if method == "ar" else ref
        if out.token_ids == ref:
            speeds[method] = out.stats["tokens_per_s"]
    return max(speeds, key=speeds.get), speeds


def run_demo(max_new_tokens: int = 48, prompts: list[str] | None = None) -> list[DemoRow]:
    """Each prompt with the chosen method and with plain decoding, on the default model at its default
    precision; rows say whether the tokens are identical."""
    import leaninfer

    engine = leaninfer.load("default")
    method, _ = fastest_method(engine)
    rows = []
    for prompt in prompts or DEMO_PROMPTS:
        out = engine.generate(prompt, max_new_tokens=max_new_tokens, method=method)
        ref = engine.generate(prompt, max_new_tokens=max_new_tokens)
        rows.append(DemoRow(prompt, out.text, method, engine.precision, out.stats["tokens_per_s"],
                            ref.stats["tokens_per_s"], out.token_ids == ref.token_ids))
    return rows
