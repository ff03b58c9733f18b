"""The tokenized corpus: a memory-mapped token file, cached by corpus content and tokenizer.

One pass reads every input file once, streaming the documents into a staging text file
while hashing them. If the cache already holds tokens for that content and tokenizer,
they are opened; otherwise the tokenizer is trained and the staging text encoded in
chunks, and the entry is renamed into place complete. Memory does not grow with the
corpus: only the token file's pages that a batch touches are read.

The entry keeps the corpus's source files apart: its meta.json names each file (a shard of
the token stream) and the offset of its first token, so the training cursor can tell where
a row crosses from one file into the next. A single file is one shard.

Batches are a pure function of (seed, step), so a resumed run reads exactly the data an
uninterrupted one would have.
"""

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import structlog

from .corpus import Skipped, iter_documents
from ..errors import OperationalError, UserError
from ..files import Scratch, discard, fsync_directory, remove_stale, scratch_name
from .tokenizer import EOS, KINDS, load_tokenizer, train_tokenizer

log = structlog.get_logger("cllm.dataset")

CHUNK_CHARS = 1 << 20
MAX_CARRY = 4 * CHUNK_CHARS  # text with no safe cut this long (no whitespace at all) is cut anyway
CACHE_FORMAT = 3  # part of every cache key; raised when what an entry holds changes meaning
# a place where the byte-level pre-tokenizer splits anyway: after a newline between non-spaces,
# or before a single space between non-spaces (GPT-2's pre-tokens carry their leading space)
SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)|(?<=\S)(?= \S)")
CUT_SEARCH = 1 << 16  # how far back from a block's end to look for a safe cut
SCAN_TOKENS = 1 << 24  # token ids checked per slice when a cache entry is opened


def last_safe_cut(text: str) -> int:
    """The end of the longest prefix of ``text`` that tokenizes as it would inside the whole; 0 if none."""
    cut = 0
    for match in SAFE_CUT.finditer(text, max(0, len(text) - CUT_SEARCH)):
        cut = match.start()
    return cut


def text_chunks(path: Path, cuts: tuple = ()) -> Iterator[str]:
    """The staging text in pieces of about CHUNK_CHARS, cut only where the byte-level pre-tokenizer
    splits anyway, so the tokens of the pieces are the tokens of the whole; memory stays bounded
    even for one endless line. A piece also ends at each of ``cuts`` (increasing character offsets
    just after an end-of-text token, where the tokenizer splits as well)."""
    cuts = iter(cuts)
    cut_at = next(cuts, None)
    with open(path, encoding="utf-8", newline="") as f:
        carry, at = "", 0  # ``at``: the character offset of ``carry``'s start
        while block := f.read(CHUNK_CHARS):
            text = carry + block
            while cut_at is not None and at + len(text) >= cut_at:
                head, text = text[:cut_at - at], text[cut_at - at:]
                if head:
                    yield head
                at, cut_at = cut_at, next(cuts, None)
            cut = last_safe_cut(text)
            if cut == 0 and len(text) < MAX_CARRY:
                carry = text
                continue
            cut = cut or len(text)
            yield text[:cut]
            carry, at = text[cut:], at + cut
        if carry:
            yield carry


def stage_corpus(path, include, exclude, max_bytes, staging: Scratch, leave_out: tuple) -> tuple:
    """Stream the documents into ``staging``, separated by the end-of-text token; returns
    (content sha256, documents, shards): each shard a source file's (name, character offset of
    its first document in the staging text).

    The digest covers each file's name and each document's length and sha256, in order; a
    document whose file turns out unusable part-way is cut back out of the staging text."""
    digest = hashlib.sha256()
    count = written = 0  # documents with text; characters of the staging text
    shards = []
    with open(staging.fd, "wb", closefd=False) as out:
        for document in iter_documents(path, include, exclude, max_bytes, leave_out=leave_out):
            start, start_written, size, length = out.tell(), written, 0, 0
            hashed = hashlib.sha256()
            try:
                for piece in filter(None, document.pieces()):  # an empty document adds no separator
                    if size == 0 and count:
                        out.write(EOS.encode("utf-8"))
                        written += len(EOS)
                    data = piece.encode("utf-8")
                    out.write(data)
                    hashed.update(data)
                    size += len(data)
                    length += len(piece)
                    written += len(piece)
            except Skipped:
                out.seek(start)
                out.truncate()
                written = start_written
                continue
            if size:
                if not shards or shards[-1][0] != document.file:
                    shards.append((document.file, written - length))
                    digest.update(b"f" + hashlib.sha256(document.file.encode("utf-8", "surrogateescape")).digest())
                digest.update(b"d" + size.to_bytes(8, "little") + hashed.digest())
                count += 1
    if count == 0:
        where = path if path is not None else "the default corpus"
        raise UserError(f"{where} holds no text (empty, or every file was skipped); give a corpus with text")
    return digest.hexdigest(), count, shards


def build_entry(staging: Path, entry: Path, kind: str, vocab_size: int, digest: str, documents: int,
                shards: list, tokenizer=None) -> None:
    """Tokenize the staging text into the cache entry ``entry`` (training the tokenizer unless given),
    noting the token offset where each of ``shards`` (name, character offset) begins.

    Another process may build the same entry at the same time: the first complete one stays."""
    started = time.perf_counter()
    tokenizer = tokenizer or train_tokenizer(kind, lambda: text_chunks(staging), vocab_size)
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    building = Scratch(entry.with_name(scratch_name(f".{entry.name}.tmp-")), directory=True)
    try:
        n_tokens = position = 0  # tokens written; characters of the staging text encoded
        cuts = [offset for _, offset in shards]
        starts = []  # the token offset of each shard's first token
        with open(building.path / "tokens.bin", "wb") as out:
            for chunk in text_chunks(staging, cuts):
                if len(starts) < len(cuts) and cuts[len(starts)] == position:
                    starts.append(n_tokens)
                ids = tokenizer.encode(chunk).astype(dtype)
                out.write(ids.tobytes())
                n_tokens += len(ids)
                position += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        tokenizer.save(building.path)
        meta = {"n_tokens": n_tokens, "dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size,
                "tokenizer": kind, "content_sha256": digest, "documents": documents,
                "shards": [{"name": name, "start": start} for (name, _), start in zip(shards, starts)],
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (building.path / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(building.path, entry)
        except OSError:
            if not (entry / "meta.json").exists():
                raise
            building.remove()  # another process finished the same entry first
            return
        fsync_directory(entry.parent)
    except BaseException:
        building.remove()
        raise
    building.release()
    log.info("dataset_tokenized", tokens=n_tokens, documents=documents, shards=len(shards),
             vocab_size=tokenizer.vocab_size, seconds=round(time.perf_counter() - started, 2))


def prepare_dataset(path, tokenizer_kind: str, vocab_size: int, cache_dir: Path, include: tuple = (),
                    exclude: tuple = (), val_fraction: float = 0.1, max_bytes: int | None = None,
                    tokenizer=None) -> "TokenDataset":
    """The tokenized corpus at ``path`` (None: the standard library's source), from the cache when it can.

    With ``tokenizer`` (a resumed run's) the corpus is encoded with it instead of a new one. A cache
    entry found damaged (truncated, ids beyond its vocabulary, unreadable) is rebuilt.
    """
    if tokenizer is not None:
        tokenizer_kind = tokenizer.kind
    if tokenizer_kind not in KINDS:
        raise UserError(f"unknown tokenizer {tokenizer_kind!r}; choose char or bpe")
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        remove_stale(cache_dir, ".staging-*")
        remove_stale(cache_dir, ".*.tmp-*")
        staging = Scratch(cache_dir / (scratch_name(".staging-") + ".txt"))
    except OSError as error:
        raise UserError(f"cannot use the cache directory {cache_dir} ({error.strerror}); "
                        "give a writable --cache-dir") from None
    try:
        return cached_or_built(path, tokenizer_kind, vocab_size, cache_dir, include, exclude, val_fraction, max_bytes,
                               tokenizer, staging)
    except OSError as error:
        raise OperationalError(f"cannot write the token cache in {cache_dir} ({error.strerror or error}); free space "
                               "or give another --cache-dir") from None
    finally:
        staging.remove()


def cached_or_built(path, tokenizer_kind, vocab_size, cache_dir, include, exclude, val_fraction, max_bytes, tokenizer,
                    staging: Scratch) -> "TokenDataset":
    """Stage the corpus, then open its cache entry, building (or rebuilding) it when needed."""
    digest, documents, shards = stage_corpus(path, include, exclude, max_bytes, staging, leave_out=(cache_dir,))
    if tokenizer is not None:
        key = f"{digest[:24]}-{CACHE_FORMAT}-{tokenizer.kind}-{tokenizer.fingerprint()}"
    else:
        key = f"{digest[:24]}-{CACHE_FORMAT}-{tokenizer_kind}" + (f"{vocab_size}" if tokenizer_kind == "bpe" else "")
    entry = cache_dir / key
    if (entry / "meta.json").exists():
        try:
            dataset = TokenDataset(entry, val_fraction)
            log.info("dataset_cached", path=str(entry))
            return dataset
        except CacheDamaged as error:
            log.warning("cache_entry_damaged", path=str(entry), reason=str(error), action="rebuilt")
            discard(entry)
    build_entry(staging.path, entry, tokenizer_kind, vocab_size, digest, documents, shards, tokenizer)
    return TokenDataset(entry, val_fraction)


class CacheDamaged(Exception):
    """A cache entry that cannot be trusted; the message says why."""


class TokenDataset:
    """Training and validation windows over a memory-mapped token file."""

    def __init__(self, entry: Path, val_fraction: float = 0.1):
        self.entry = entry
        self.tokenizer, self.tokens, self.shards = open_entry(entry)
        self.n_val = int(len(self.tokens) * val_fraction)
        self.n_train = len(self.tokens) - self.n_val
        self.train = self.tokens[:self.n_train]
        self.val = self.tokens[self.n_train:]
        self.orders = {}  # (seed, epoch, seq_len) -> the epoch's window order
        # the offsets of the end-of-text separators that end a source file, each before shard i + 1's first token
        self.file_ends = np.array([start - 1 for start in self.shards.starts[1:]], dtype=np.int64)

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

    def train_windows(self, step: int, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
        """The offsets into the training split of step ``step``'s (from 0) rows, int64 (B,).

        Within an epoch the windows come in an order drawn from (seed, epoch); each window
        of an epoch is used once.
        """
        epoch, index = divmod(step, self.steps_per_epoch(batch_size, seq_len))
        order = self.window_order(seed, epoch, seq_len)
        picks = np.resize(order, max(len(order), batch_size))[index * batch_size:(index + 1) * batch_size]
        return picks.astype(np.int64) * seq_len

    def train_batch(self, step: int, batch_size: int, seq_len: int, seed: int) -> tuple:
        """(x, y) int32 (B,T) for step ``step`` (from 0); y is x shifted by one token."""
        return self.gather(self.train, self.train_windows(step, batch_size, seq_len, seed), seq_len)

    def files_crossed(self, starts: np.ndarray, seq_len: int) -> tuple:
        """Where rows starting at ``starts`` cross from one source file into the next: (flat offsets into
        the rows' (B,T) tokens of the end-of-text separators that end a file, the shard each begins)."""
        first = np.searchsorted(self.file_ends, starts)
        last = np.searchsorted(self.file_ends, starts + seq_len)
        positions, shards = [], []
        for row, (start, a, b) in enumerate(zip(starts.tolist(), first.tolist(), last.tolist())):
            positions += [row * seq_len + int(end) - start for end in self.file_ends[a:b]]
            shards += range(a + 1, b + 1)
        return positions, shards

    def window_order(self, seed: int, epoch: int, seq_len: int) -> np.ndarray:
        """The order of an epoch's training windows; the last two drawn are kept (an epoch's and the next)."""
        key = (seed, epoch, seq_len)
        if key not in self.orders:
            if len(self.orders) >= 2:
                del self.orders[next(iter(self.orders))]
            self.orders[key] = np.random.default_rng([seed, epoch]).permutation(self.windows(self.n_train, seq_len))
        return self.orders[key]

    def forget_order(self, seed: int, epoch: int, seq_len: int) -> None:
        self.orders.pop((seed, epoch, seq_len), None)

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


@dataclass(frozen=True)
class Shards:
    """The source files of a token stream, in order: each one's name and the offset of its first token."""

    names: tuple
    starts: tuple  # increasing, the first 0


def read_shards(meta: dict, n_tokens: int) -> Shards:
    """The shards meta.json lists; ValueError unless they cover the stream from its first token, in order."""
    if "shards" not in meta:
        raise ValueError("meta.json lists no source files (an entry older than their offsets)")
    shards = meta["shards"]
    if type(shards) is not list or not shards or not all(type(s) is dict for s in shards):
        raise ValueError(f"shards {shards!r:.80}")
    names, starts = tuple(s.get("name") for s in shards), tuple(s.get("start") for s in shards)
    if (not all(type(name) is str for name in names) or not all(type(start) is int for start in starts)
            or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= n_tokens):
        raise ValueError(f"shard offsets {list(starts)[:8]} do not run from 0 upwards below {n_tokens} tokens")
    return Shards(names, starts)


def open_entry(entry: Path) -> tuple:
    """(tokenizer, memory-mapped token ids, shards) of a cache entry, every id checked against the
    vocabulary; CacheDamaged when the entry is not whole."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        dtype, n_tokens = np.dtype(meta["dtype"]), meta["n_tokens"]
        if dtype not in (np.uint16, np.uint32) or type(n_tokens) is not int or n_tokens <= 0:
            raise ValueError(f"dtype {dtype}, n_tokens {n_tokens!r}")
        shards = read_shards(meta, n_tokens)
        tokenizer = load_tokenizer(entry)
        size = (entry / "tokens.bin").stat().st_size
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, UserError) as error:
        raise CacheDamaged(f"unreadable: {error}") from None
    if size != n_tokens * dtype.itemsize:
        raise CacheDamaged(f"tokens.bin holds {size} bytes, meta.json says {n_tokens} tokens of {dtype}")
    tokens = np.memmap(entry / "tokens.bin", dtype=dtype, mode="r", shape=(n_tokens,))
    for start in range(0, n_tokens, SCAN_TOKENS):
        if int(tokens[start:start + SCAN_TOKENS].max()) >= tokenizer.vocab_size:
            raise CacheDamaged(f"token ids beyond the vocabulary of {tokenizer.vocab_size}")
    if any(int(tokens[start - 1]) != tokenizer.eos_id for start in shards.starts[1:]):
        raise CacheDamaged("a source file's first token does not follow an end-of-text separator")
    return tokenizer, tokens, shards
