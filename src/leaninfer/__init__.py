"""leaninfer: cheaper neural-network inference without losing quality.

    import leaninfer
    engine = leaninfer.load("default")            # Gemma 3 270M (Gemma terms apply)
    out = engine.generate("Why is the sky blue?", max_new_tokens=64)
    print(out.text, out.stats["tokens_per_s"])
"""

from leaninfer.engine import DEFAULT_PRECISION, Engine, GenerationResult, load
from leaninfer.generate.sampling import SamplingConfig
from leaninfer.io import ModelLoadError
from leaninfer.models.config import ModelConfig

__version__ = "0.1.0"
__all__ = ["load", "Engine", "GenerationResult", "SamplingConfig", "ModelConfig", "ModelLoadError",
           "DEFAULT_PRECISION", "__version__"]
