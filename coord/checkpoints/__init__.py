"""Checkpoints in the Hugging Face GPT-2 layout, and resumption."""
