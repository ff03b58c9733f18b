"""Tokenizers: ``char`` (the corpus's characters) and ``bpe`` (byte-level BPE of the ``tokenizers`` library,
trained on the corpus or loaded from a GPT-2 directory).

Both encode text to int32 ids and decode ids to text exactly, and both have the end-of-text
token ``<|endoftext|>`` that separates documents and ends generation. Both are saved as the
``tokenizer.json`` that ``tokenizers.Tokenizer.from_file`` and transformers' ``AutoTokenizer``
load: ``char`` as a word-level vocabulary of single characters split one per token, with
the end-of-text token last. A GPT-2 directory may instead hold ``vocab.json`` and ``merges.txt``.
"""

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import UserError

EOS = "<|endoftext|>"
MIN_BPE_VOCAB = 257  # the 256 bytes and the end-of-text token
KINDS = ("char", "bpe")
TOKENIZER_FILE = "tokenizer.json"
GPT2_FILES = ("vocab.json", "merges.txt")


class CharTokenizer:
    """One id per character of the corpus, in code point order, then the end-of-text token."""

    kind = "char"

    def __init__(self, chars: list):
        self.chars = list(chars)
        self.eos_id = len(self.chars)
        codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self.table = np.full(int(codes.max()) + 1 if len(codes) else 1, -1, dtype=np.int32)
        self.table[codes] = np.arange(len(codes), dtype=np.int32)
        self.alphabet = np.array(self.chars + [EOS])

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode_piece(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.full(len(codes), -1, dtype=np.int32)
        known = codes < len(self.table)
        ids[known] = self.table[codes[known]]
        if (ids < 0).any():
            missing = chr(int(codes[np.argmax(ids < 0)]))
            raise UserError(f"the character {missing!r} is not in this model's vocabulary of {len(self.chars)} "
                            "characters; use only characters of the training corpus")
        return ids

    def encode(self, text: str) -> np.ndarray:
        pieces = [self.encode_piece(piece) for piece in text.split(EOS)]
        eos = np.array([self.eos_id], dtype=np.int32)
        return np.concatenate([part for piece in pieces for part in (eos, piece)][1:])

    def decode(self, ids) -> str:
        return "".join(self.alphabet[np.asarray(ids, dtype=np.int64)])

    def library_tokenizer(self) -> Tokenizer:
        """The same vocabulary as a ``tokenizers`` Tokenizer: every character its own token."""
        vocab = {c: i for i, c in enumerate(self.chars)} | {EOS: self.eos_id}
        tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=None))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()
        tokenizer.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
        return tokenizer

    def save(self, directory: Path) -> None:
        write_tokenizer(self.library_tokenizer(), directory)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.chars, ensure_ascii=False).encode()).hexdigest()[:16]

    @classmethod
    def from_vocab(cls, vocab: dict) -> "CharTokenizer | None":
        """The character tokenizer a word-level vocabulary describes, or None when it is not one."""
        by_id = sorted(vocab.items(), key=lambda item: item[1])
        chars = [token for token, _ in by_id[:-1]]
        if (not chars or by_id[-1] != (EOS, len(chars)) or [i for _, i in by_id[:-1]] != list(range(len(chars)))
                or not all(len(c) == 1 for c in chars)):
            return None
        return cls(chars)

    @classmethod
    def train(cls, chunks: Iterable[str]) -> "CharTokenizer":
        seen = set()
        for chunk in chunks:
            seen.update(chunk.replace(EOS, ""))  # the separator is a token of its own, not characters
        return cls(sorted(seen))


class BpeTokenizer:
    """A ``tokenizers`` Tokenizer with an end-of-text token: CLLM's byte-level BPE or a GPT-2 one."""

    kind = "bpe"

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.token_to_id(EOS)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def library_tokenizer(self) -> Tokenizer:
        return self.tokenizer

    def save(self, directory: Path) -> None:
        write_tokenizer(self.tokenizer, directory)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.tokenizer.to_str().encode()).hexdigest()[:16]

    @classmethod
    def from_gpt2_files(cls, directory: Path) -> "BpeTokenizer":
        """GPT-2's byte-level BPE from its ``vocab.json`` and ``merges.txt``."""
        vocab, merges = (Path(directory) / name for name in GPT2_FILES)
        try:
            tokenizer = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        except Exception as error:  # the library raises plain Exception for a bad file
            raise UserError(f"{vocab} and {merges} are not a BPE vocabulary and merges the tokenizers library "
                            f"can read ({error})") from None
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        if tokenizer.token_to_id(EOS) is not None:
            tokenizer.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
        return cls(tokenizer)

    @classmethod
    def train(cls, chunks: Iterable[str], vocab_size: int) -> "BpeTokenizer":
        if vocab_size < MIN_BPE_VOCAB:
            raise UserError(f"--vocab-size {vocab_size} is too small for byte-level BPE; use at least {MIN_BPE_VOCAB}")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        # learn from the text between end-of-text tokens, as encoding splits it there too
        tokenizer.train_from_iterator((piece for chunk in chunks for piece in chunk.split(EOS)), trainer=trainer)
        return cls(tokenizer)


def train_tokenizer(kind: str, chunks: Callable[[], Iterable[str]], vocab_size: int):
    """A tokenizer of ``kind`` trained on the text ``chunks()`` yields."""
    if kind == "char":
        return CharTokenizer.train(chunks())
    if kind == "bpe":
        return BpeTokenizer.train(chunks(), vocab_size)
    raise UserError(f"unknown tokenizer {kind!r}; choose one of {', '.join(KINDS)}")


def load_tokenizer(directory: Path):
    """The tokenizer in ``directory``: ``tokenizer.json``, or GPT-2's ``vocab.json`` and ``merges.txt``."""
    directory = Path(directory)
    file = directory / TOKENIZER_FILE
    if file.exists():
        try:
            library = Tokenizer.from_file(str(file))
        except Exception as error:  # the library raises plain Exception for a bad file
            raise UserError(f"{file} is not a tokenizer the tokenizers library can load ({error}); "
                            "the file is damaged") from None
        chars = CharTokenizer.from_vocab(library.get_vocab()) if isinstance(library.model, models.WordLevel) else None
        tokenizer = chars or BpeTokenizer(library)
    elif all((directory / name).exists() for name in GPT2_FILES):
        file = directory / GPT2_FILES[0]
        tokenizer = BpeTokenizer.from_gpt2_files(directory)
    else:
        raise UserError(f"{directory} has no tokenizer (neither {TOKENIZER_FILE} nor {' and '.join(GPT2_FILES)})")
    if tokenizer.eos_id is None:
        raise UserError(f"{file} has no {EOS} token; CLLM needs it to separate documents and end generation")
    return tokenizer


def write_tokenizer(tokenizer, directory: Path) -> None:
    """Write a `tokenizers` tokenizer as tokenizer.json through Python's own file calls: the library's
    ``save`` reports a full disk as a bare Exception, which no caller can tell from a bug; this raises OSError."""
    (Path(directory) / TOKENIZER_FILE).write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
