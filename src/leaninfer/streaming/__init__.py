"""On-device streaming detectors: audio synthesis, causal features, small models, losses, quantisers, runtime."""
