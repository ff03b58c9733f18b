"""The corpus of a run over ranks: rank 0 alone writes the token cache, every rank trains on the same ids.

Rank 0 prepares the corpus as a single process does (training the tokenizer, writing the cache
entry). Every other rank then opens that same entry when its own cache directory holds it (one
machine, or a cache on shared storage), and otherwise encodes its own copy of the corpus with rank 0's
tokenizer in a scratch directory it removes at once (the ids stay mapped in memory): the cache
is never written twice. Last, the ranks compare a digest of their token ids.
"""

import hashlib
import shutil
import tempfile
from pathlib import Path

from ..data.dataset import TokenDataset, prepare_dataset
from ..data.tokenizer import load_tokenizer

PREPARE_TIMEOUT_S = 6 * 3600.0  # the other ranks wait this long for rank 0 to tokenize a corpus


def tokenizer_files(entry: Path) -> dict:
    """The files of a cache entry a tokenizer is loaded from (not the ids)."""
    return {p.name: p.read_bytes() for p in entry.iterdir() if p.is_file() and p.name != "tokens.bin"}


def shared_dataset(ranks, path, tokenizer_kind: str, vocab_size: int, cache_dir: Path, include=(), exclude=(),
                   tokenizer=None) -> TokenDataset:
    """``prepare_dataset`` for a run over ``ranks``; the same arguments."""
    dataset = offer = None
    timeout = max(ranks.timeout, PREPARE_TIMEOUT_S)
    with ranks.together("rank 0's tokenizing of the corpus", timeout):
        if ranks.is_root:
            dataset = prepare_dataset(path, tokenizer_kind, vocab_size, cache_dir, include, exclude,
                                      tokenizer=tokenizer)
            offer = {"entry": str(dataset.entry), "files": tokenizer_files(dataset.entry)}
    offer = ranks.run_sync("rank 0's tokenized corpus", ranks.comm.bcast, offer, 0)
    with ranks.together("the other ranks' copies of the corpus", timeout):
        if dataset is None:
            dataset = open_or_encode(offer, path, vocab_size, Path(cache_dir), include, exclude)
    digest = hashlib.blake2b(dataset.tokens, digest_size=16).digest()
    ranks.run_sync("the comparison of the ranks' corpora", ranks.same_everywhere, digest, "token ids of the corpus")
    return dataset


def open_or_encode(offer: dict, path, vocab_size: int, cache_dir: Path, include, exclude) -> TokenDataset:
    """Rank 0's entry when it is in this rank's own cache directory, else a private encoding."""
    entry = Path(offer["entry"])
    if entry.parent.resolve() == cache_dir.resolve() and entry.is_dir() and tokenizer_files(entry) == offer["files"]:
        return TokenDataset(entry)
    scratch = Path(tempfile.mkdtemp(prefix="cllm-rank-"))
    try:
        (scratch / "tokenizer").mkdir()
        for name, content in offer["files"].items():
            (scratch / "tokenizer" / name).write_bytes(content)
        tokenizer = load_tokenizer(scratch / "tokenizer")
        return prepare_dataset(path, tokenizer.kind, vocab_size, scratch / "cache", include, exclude,
                               tokenizer=tokenizer)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
