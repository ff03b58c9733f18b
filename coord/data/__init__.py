"""Corpora, tokenizers and the memory-mapped token cache."""
