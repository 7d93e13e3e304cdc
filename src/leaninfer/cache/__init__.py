"""KV caches."""

from leaninfer.cache.kv import KVCache

__all__ = ["KVCache"]
