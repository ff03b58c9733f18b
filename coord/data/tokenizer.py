"""Tokenizers: ``char`` (the corpus's characters) and ``bpe`` (byte-level BPE of the ``tokenizers`` library).

Both encode text to int32 ids and decode ids to text exactly. ``char`` is saved as
``vocab.json``; ``bpe`` as the ``tokenizer.json`` that ``tokenizers.Tokenizer.from_file``
and the Hugging Face ecosystem load.
"""

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import UserError

EOS = "<|endoftext|>"
MIN_BPE_VOCAB = 257  # the 256 bytes and the end-of-text token
KINDS = ("char", "bpe")


class CharTokenizer:
    kind = "char"
    eos_id = None
    file = "vocab.json"

    def __init__(self, chars: list):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self.table = np.full(int(codes.max()) + 1 if len(codes) else 1, -1, dtype=np.int32)
        self.table[codes] = np.arange(len(codes), dtype=np.int32)
        self.alphabet = np.array(self.chars)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.full(len(codes), -1, dtype=np.int32)
        known = codes < len(self.table)
        ids[known] = self.table[codes[known]]
        if (ids < 0).any():
            missing = chr(int(codes[np.argmax(ids < 0)]))
            raise UserError(f"the character {missing!r} is not in this model's vocabulary of {self.vocab_size} "
                            "characters; use only characters of the training corpus")
        return ids

    def decode(self, ids) -> str:
        return "".join(self.alphabet[np.asarray(ids, dtype=np.int64)])

    def serialized(self) -> str:
        return json.dumps({"kind": "char", "chars": self.chars}, ensure_ascii=False)

    def save(self, directory: Path) -> None:
        (Path(directory) / self.file).write_text(self.serialized() + "\n", encoding="utf-8")

    def fingerprint(self) -> str:
        return hashlib.sha256(self.serialized().encode()).hexdigest()[:16]

    @classmethod
    def load(cls, directory: Path) -> "CharTokenizer":
        file = Path(directory) / cls.file
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
            chars = raw["chars"]
            if raw.get("kind") != "char" or not all(isinstance(c, str) and len(c) == 1 for c in chars):
                raise ValueError("not a list of single characters")
            if len(set(chars)) != len(chars) or not chars:
                raise ValueError("empty or repeated characters")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(f"{file} is not a CLLM character vocabulary ({error}); the checkpoint is damaged") from None
        return cls(chars)

    @classmethod
    def train(cls, chunks: Iterable[str]) -> "CharTokenizer":
        seen = set()
        for chunk in chunks:
            seen.update(chunk)
        return cls(sorted(seen))


class BpeTokenizer:
    kind = "bpe"
    file = "tokenizer.json"

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.token_to_id(EOS)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int32)

    def encode_batch(self, texts: list) -> list:
        return [np.asarray(e.ids, dtype=np.int32) for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        self.tokenizer.save(str(Path(directory) / self.file))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.tokenizer.to_str().encode()).hexdigest()[:16]

    @classmethod
    def load(cls, directory: Path) -> "BpeTokenizer":
        file = Path(directory) / cls.file
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as error:  # the library raises plain Exception for a bad file
            raise UserError(f"{file} is not a tokenizer the tokenizers library can load ({error}); "
                            "the checkpoint is damaged") from None
        if tokenizer.token_to_id(EOS) is None:
            raise UserError(f"{file} has no {EOS} token; it was not written by CLLM")
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
        tokenizer.train_from_iterator(chunks, trainer=trainer)
        return cls(tokenizer)


def train_tokenizer(kind: str, chunks: Callable[[], Iterable[str]], vocab_size: int):
    """A tokenizer of ``kind`` trained on the text ``chunks()`` yields."""
    if kind == "char":
        return CharTokenizer.train(chunks())
    if kind == "bpe":
        return BpeTokenizer.train(chunks(), vocab_size)
    raise UserError(f"unknown tokenizer {kind!r}; choose one of {', '.join(KINDS)}")


def load_tokenizer(directory: Path):
    """The tokenizer saved in ``directory`` (tokenizer.json or vocab.json)."""
    directory = Path(directory)
    if (directory / BpeTokenizer.file).exists():
        return BpeTokenizer.load(directory)
    if (directory / CharTokenizer.file).exists():
        return CharTokenizer.load(directory)
    raise UserError(f"{directory} has no tokenizer (neither {BpeTokenizer.file} nor {CharTokenizer.file})")
