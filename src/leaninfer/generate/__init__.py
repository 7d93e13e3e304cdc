"""Generation: sampling (pure functions), the autoregressive loop, and later speculative methods."""
