"""Benchmark runners. Each writes JSON first, then a markdown table and a PNG drawn from the saved JSON."""
