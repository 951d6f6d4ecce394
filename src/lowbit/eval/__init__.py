"""Measuring quality (perplexity, KL to the unquantized model) and memory, one protocol for every method."""
