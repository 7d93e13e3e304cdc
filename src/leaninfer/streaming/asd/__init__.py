"""Real-time active speaker detection: synthetic AV benchmark, band-limited transformers, streaming runtime."""
