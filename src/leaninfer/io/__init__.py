"""Checkpoint I/O: Hugging Face folders, GGUF files, tokenizers, the converted-weights cache."""


class ModelLoadError(RuntimeError):
    """A checkpoint could not be loaded (missing path, unsupported architecture, corrupt or truncated file)."""
