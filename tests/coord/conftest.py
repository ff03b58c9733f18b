"""Fixtures shared by the coord tests."""

import pytest

from .hf import gpt2_sized_tokenizer


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """A byte-level BPE of GPT-2's 50,257 ids, trained once per session (about 5 s)."""
    return gpt2_sized_tokenizer()
