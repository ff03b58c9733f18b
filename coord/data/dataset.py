"""The tokenized corpus: a memory-mapped token file, cached by corpus content and tokenizer.

One pass reads every input file once, streaming the documents into a staging text file
while hashing them. If the cache already holds tokens for that content and tokenizer,
they are opened; otherwise the tokenizer is trained and the staging text encoded in
chunks, and the entry is renamed into place complete. Memory does not grow with the
corpus: only the token file's pages that a batch touches are read.

Batches are a pure function of (seed, step), so a resumed run reads exactly the data an
uninterrupted one would have.
"""

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import structlog

from .corpus import iter_documents
from ..errors import UserError
from .tokenizer import EOS, KINDS, load_tokenizer, train_tokenizer

log = structlog.get_logger("cllm.dataset")

CHUNK_CHARS = 1 << 20
CACHE_FORMAT = 2  # part of every cache key; raised when what an entry holds changes meaning


def text_chunks(path: Path) -> Iterator[str]:
    """The staging text in pieces of about CHUNK_CHARS, cut only after a newline that is followed
    by a non-space character: there the byte-level pre-tokenizer splits anyway, so the tokens
    of the pieces are the tokens of the whole."""
    with open(path, encoding="utf-8", newline="") as f:
        carry = ""
        while block := f.read(CHUNK_CHARS):
            text = carry + block
            cut = len(text)
            while cut > 0:
                cut = text.rfind("\n", 0, cut)
                if cut < 0 or (cut + 1 < len(text) and not text[cut + 1].isspace() and cut > 0
                               and not text[cut - 1].isspace()):
                    break
            if cut <= 0:
                carry = text
                continue
            yield text[:cut + 1]
            carry = text[cut + 1:]
        if carry:
            yield carry


def stage_corpus(path, include, exclude, max_bytes, staging: Path) -> tuple:
    """Stream the documents into ``staging``, separated by the end-of-text token; returns
    (content sha256, documents, characters)."""
    digest = hashlib.sha256()
    count = chars = 0
    with open(staging, "w", encoding="utf-8", newline="") as out:
        for document in iter_documents(path, include, exclude, max_bytes):
            if count:
                out.write(EOS)
            out.write(document.text)
            data = document.text.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
            count += 1
            chars += len(document.text)
    if count == 0 or chars == 0:
        where = path if path is not None else "the default corpus"
        raise UserError(f"{where} holds no text (empty, or every file was skipped); give a corpus with text")
    return digest.hexdigest(), count, chars


def build_entry(staging: Path, entry: Path, kind: str, vocab_size: int, digest: str, documents: int,
                tokenizer=None) -> None:
    """Tokenize the staging text into the cache entry ``entry`` (training the tokenizer unless given)."""
    started = time.perf_counter()
    tokenizer = tokenizer or train_tokenizer(kind, lambda: text_chunks(staging), vocab_size)
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    building = entry.with_name(f".{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        n_tokens = 0
        with open(building / "tokens.bin", "wb") as out:
            for chunk in text_chunks(staging):
                ids = tokenizer.encode(chunk).astype(dtype)
                out.write(ids.tobytes())
                n_tokens += len(ids)
        tokenizer.save(building)
        meta = {"n_tokens": n_tokens, "dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size,
                "tokenizer": kind, "content_sha256": digest, "documents": documents,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (building / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.rename(building, entry)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    log.info("dataset_tokenized", tokens=n_tokens, documents=documents, vocab_size=tokenizer.vocab_size,
             seconds=round(time.perf_counter() - started, 2))


def prepare_dataset(path, tokenizer_kind: str, vocab_size: int, cache_dir: Path, include: tuple = (),
                    exclude: tuple = (), val_fraction: float = 0.1, max_bytes: int | None = None,
                    tokenizer=None) -> "TokenDataset":
    """The tokenized corpus at ``path`` (None: the standard library's source), from the cache when it can.

    With ``tokenizer`` (a resumed run's) the corpus is encoded with it instead of a new one.
    """
    if tokenizer is not None:
        tokenizer_kind = tokenizer.kind
    if tokenizer_kind not in KINDS:
        raise UserError(f"unknown tokenizer {tokenizer_kind!r}; choose char or bpe")
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the cache directory {cache_dir} ({error.strerror}); "
                        "give a writable --cache-dir") from None
    staging = cache_dir / f".staging-{os.getpid()}.txt"
    try:
        digest, documents, _ = stage_corpus(path, include, exclude, max_bytes, staging)
        if tokenizer is not None:
            key = f"{digest[:24]}-{CACHE_FORMAT}-{tokenizer.kind}-{tokenizer.fingerprint()}"
        else:
            key = f"{digest[:24]}-{CACHE_FORMAT}-{tokenizer_kind}" + (f"{vocab_size}" if tokenizer_kind == "bpe" else "")
        entry = cache_dir / key
        if (entry / "meta.json").exists():
            log.info("dataset_cached", path=str(entry))
        else:
            build_entry(staging, entry, tokenizer_kind, vocab_size, digest, documents, tokenizer)
    finally:
        staging.unlink(missing_ok=True)
    return TokenDataset(entry, val_fraction)


class TokenDataset:
    """Training and validation windows over a memory-mapped token file."""

    def __init__(self, entry: Path, val_fraction: float = 0.1):
        meta = json.loads((entry / "meta.json").read_text())
        self.entry = entry
        self.tokenizer = load_tokenizer(entry)
        self.tokens = np.memmap(entry / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
        self.n_val = int(len(self.tokens) * val_fraction)
        self.n_train = len(self.tokens) - self.n_val
        self.train = self.tokens[:self.n_train]
        self.val = self.tokens[self.n_train:]
        self.permutation = (None, None)  # (seed, epoch) -> window order, the last one kept

    def validate_seq_len(self, seq_len: int) -> None:
        smallest = min(self.n_train, self.n_val)
        if smallest < seq_len + 1:
            raise UserError(f"the corpus has {len(self.tokens)} tokens ({self.n_train} training, {self.n_val} "
                            f"validation), too few for --seq-len {seq_len}: each split needs {seq_len + 1}; "
                            "use a smaller --seq-len or more text")

    def windows(self, split_size: int, seq_len: int) -> int:
        return (split_size - 1) // seq_len

    def steps_per_epoch(self, batch_size: int, seq_len: int) -> int:
        return max(1, self.windows(self.n_train, seq_len) // batch_size)

    def epoch_of(self, step: int, batch_size: int, seq_len: int) -> int:
        return step // self.steps_per_epoch(batch_size, seq_len)

    def gather(self, split: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple:
        index = starts[:, None] + np.arange(seq_len + 1)[None, :]
        rows = split[index].astype(np.int32)
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])

    def train_batch(self, step: int, batch_size: int, seq_len: int, seed: int) -> tuple:
        """(x, y) int32 (B,T) for step ``step`` (from 0); y is x shifted by one token.

        Within an epoch the windows come in an order drawn from (seed, epoch); each window
        of an epoch is used once.
        """
        per_epoch = self.steps_per_epoch(batch_size, seq_len)
        epoch, index = divmod(step, per_epoch)
        if self.permutation[0] != (seed, epoch):
            order = np.random.default_rng([seed, epoch]).permutation(self.windows(self.n_train, seq_len))
            self.permutation = ((seed, epoch), order)
        order = self.permutation[1]
        picks = np.resize(order, max(len(order), batch_size))[index * batch_size:(index + 1) * batch_size]
        return self.gather(self.train, picks.astype(np.int64) * seq_len, seq_len)

    def val_batches(self, batch_size: int, seq_len: int, max_batches: int) -> list:
        """A fixed set of validation batches: windows evenly spaced across the validation split."""
        return self.spread_batches(self.val, batch_size, seq_len, max_batches)

    def spread_batches(self, tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int) -> list:
        """Up to ``max_batches`` batches of windows evenly spaced across ``tokens``."""
        available = self.windows(len(tokens), seq_len)
        if available < 1:
            raise UserError(f"{len(tokens)} tokens are too few for windows of {seq_len + 1}; give more text")
        count = min(available, batch_size * max_batches)
        starts = np.linspace(0, available - 1, count).round().astype(np.int64) * seq_len
        return [self.gather(tokens, starts[i:i + batch_size], seq_len) for i in range(0, count, batch_size)]
