"""Keyword spotting kit: synthetic corpus, models, training, export and the `bench kws` runner."""
