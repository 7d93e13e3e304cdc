"""Model definitions: one configurable decoder (`Decoder`) for every supported family."""

from leaninfer.models.config import ModelConfig
from leaninfer.models.transformer import Decoder

__all__ = ["ModelConfig", "Decoder"]
