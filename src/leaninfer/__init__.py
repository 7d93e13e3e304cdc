"""leaninfer: cheaper neural-network inference without losing quality."""

__version__ = "0.1.0"
