"""Tokenizers, corpus reading and the token cache."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import structlog
from tokenizers import Tokenizer

from cllm.coord.data import corpus as corpus_module, dataset as dataset_module
from cllm.coord.data.corpus import iter_documents
from cllm.coord.data.dataset import prepare_dataset, text_chunks
from cllm.coord.errors import UserError
from cllm.coord.data.tokenizer import EOS, BpeTokenizer, CharTokenizer, load_tokenizer

from .runs import SHAKESPEARE, texts

UNICODE = "Ünïcödé — 漢字 and emoji 🚀\n\n\ttabs   and   runs of spaces\r\nend"


@pytest.fixture(scope="module")
def bpe():
    return BpeTokenizer.train([SHAKESPEARE.read_text()[:200_000]], 400)


def test_char_round_trip_and_unknown_characters():
    tok = CharTokenizer.train([UNICODE + EOS])
    assert tok.vocab_size == len(set(UNICODE)) + 1 and tok.eos_id == tok.vocab_size - 1  # end-of-text comes last
    assert tok.decode(tok.encode(UNICODE)) == UNICODE
    ids = tok.encode(f"{EOS}ab{EOS}{EOS}c")
    assert ids.tolist() == [tok.eos_id, *tok.encode("ab"), tok.eos_id, tok.eos_id, *tok.encode("c")]
    assert tok.decode(ids) == f"{EOS}ab{EOS}{EOS}c"
    with pytest.raises(UserError, match="'Z' is not in this model's vocabulary"):
        tok.encode("Zebra")


def test_char_vocabulary_saves_as_a_tokenizers_file_and_loads(tmp_path):
    tok = CharTokenizer.train([UNICODE])
    tok.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
    again = load_tokenizer(tmp_path)
    assert again.kind == "char" and again.chars == tok.chars and again.fingerprint() == tok.fingerprint()
    text = UNICODE + EOS + UNICODE[:9]
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(text).ids == tok.encode(text).tolist()
    without_eos = Tokenizer.from_file(str(tmp_path / "tokenizer.json")).to_str().replace(EOS, "<|other|>")
    (tmp_path / "tokenizer.json").write_text(without_eos)
    with pytest.raises(UserError, match=r"tokenizer.json has no <\|endoftext\|> token"):
        load_tokenizer(tmp_path)


def test_bpe_has_the_requested_size_and_round_trips_any_text(bpe):
    assert bpe.vocab_size == 400
    for text in (UNICODE, "  leading", "trailing  ", "\n\n\n", SHAKESPEARE.read_text()[5000:7000]):
        assert bpe.decode(bpe.encode(text)) == text
    assert bpe.eos_id is not None


def test_bpe_tokenizer_json_loads_in_the_tokenizers_library(bpe, tmp_path):
    bpe.save(tmp_path)
    library = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert library.encode(UNICODE).ids == bpe.encode(UNICODE).tolist()
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(UserError, match="tokenizer.json is not a tokenizer"):
        load_tokenizer(tmp_path)


def test_bpe_refuses_a_vocabulary_below_the_byte_alphabet():
    with pytest.raises(UserError, match="at least 257"):
        BpeTokenizer.train(["text"], 100)


@pytest.mark.parametrize("lines", [True, False], ids=["lines", "one-line"])
def test_chunked_encoding_equals_whole_text_encoding(bpe, tmp_path, monkeypatch, lines):
    text = SHAKESPEARE.read_text()[:40_000]
    text = text if lines else text.replace("\n", " ")
    path = tmp_path / "staging.txt"
    path.write_text(text)
    monkeypatch.setattr(dataset_module, "CHUNK_CHARS", 997)
    chunks = list(text_chunks(path))
    assert len(chunks) > 10 and "".join(chunks) == text
    assert np.array_equal(np.concatenate([bpe.encode(c) for c in chunks]), bpe.encode(text))


def make_tree(root: Path) -> None:
    (root / "a").mkdir(parents=True)
    (root / "a" / "one.txt").write_text("first file")
    (root / "a" / "two.md").write_text("second file")
    (root / "b.txt").write_text("third file")
    (root / "blob.bin").write_bytes(b"\x00\x01binary")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    os.symlink(root, root / "a" / "loop")  # a cycle back to the root


def test_a_directory_is_walked_once_in_order_skipping_binary_and_undecodable_files(tmp_path, monkeypatch):
    make_tree(tmp_path)
    reads = []
    original = corpus_module.open_file
    monkeypatch.setattr(corpus_module, "open_file", lambda path: reads.append(path.name) or original(path))
    with structlog.testing.capture_logs() as logs:
        assert texts(tmp_path) == ["first file", "second file", "third file"]
    assert sorted(reads) == sorted(set(reads)) == ["b.txt", "blob.bin", "latin1.txt", "one.txt", "two.md"]
    skipped = {Path(e["path"]).name: e["reason"] for e in logs if e["event"] == "corpus_file_skipped"}
    assert skipped == {"blob.bin": "binary", "latin1.txt": "not utf-8"}


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_documents_are_separated_by_the_end_of_text_token(tmp_path, kind):
    make_tree(tmp_path / "tree")
    data = prepare_dataset(tmp_path / "tree", kind, 300, tmp_path / "cache", val_fraction=0.0)
    tokenizer = data.tokenizer
    assert np.count_nonzero(np.asarray(data.tokens) == tokenizer.eos_id) == 2
    assert tokenizer.decode(data.tokens) == f"first file{EOS}second file{EOS}third file"
    assert not any("endoftext" in token for token in tokenizer.library_tokenizer().get_vocab() if token != EOS)


def test_an_empty_document_adds_no_separator(tmp_path):
    # the cache key covers the documents with text only: an empty one between them must leave the stream as is
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "one"}\n{"text": ""}\n{"text": "two"}\n')
    data = prepare_dataset(jsonl, "char", 0, tmp_path / "cache", val_fraction=0.0)
    assert data.tokenizer.decode(data.tokens) == f"one{EOS}two"


def test_include_and_exclude_globs(tmp_path):
    make_tree(tmp_path)
    assert texts(tmp_path, include=("*.txt",)) == ["first file", "third file"]
    assert texts(tmp_path, include=("*.txt",), exclude=("a/*",)) == ["third file"]


def test_jsonl_and_squad_inputs(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n')
    assert texts(jsonl) == ["one", "two"]
    jsonl.write_text('{"text": "one"}\n{"body": "no text"}\n')
    with pytest.raises(UserError, match="docs.jsonl:2"):
        list(iter_documents(jsonl))
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"version": "v2.0", "data": [{"title": "T", "paragraphs": [{
        "context": "Paris is in France.",
        "qas": [{"question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
                {"question": "Where is Rome?", "answers": [], "is_impossible": True}]}]}]}))
    assert texts(squad) == [("Paris is in France.\n\nQuestion: Where is Paris?\nAnswer: France\n"
                        "Question: Where is Rome?\nAnswer: (no answer)")]


def test_the_default_corpus_is_the_standard_library_source_under_a_cap():
    docs = [(d.source, len(d.text.encode())) for d in iter_documents(None, max_bytes=300_000)]
    assert docs and all(source.endswith(".py") for source, _ in docs)
    assert not any("/test/" in source or "/tests/" in source for source, _ in docs)
    assert 300_000 <= sum(size for _, size in docs) < 300_000 + max(size for _, size in docs)


def test_missing_and_empty_inputs_are_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list(iter_documents(tmp_path / "nope"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="holds no text"):
        prepare_dataset(tmp_path / "empty.txt", "char", 0, tmp_path / "cache")


def test_the_token_cache_is_reused_and_keyed_by_content(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:30_000])
    first = prepare_dataset(corpus, "char", 0, tmp_path / "cache")
    trained = []
    monkeypatch.setattr(CharTokenizer, "train", classmethod(lambda cls, chunks: trained.append(1)))
    with structlog.testing.capture_logs() as logs:
        second = prepare_dataset(corpus, "char", 0, tmp_path / "cache")
    assert not trained and any(e["event"] == "dataset_cached" for e in logs)
    assert np.array_equal(first.tokens, second.tokens)
    assert {p.name for p in first.entry.iterdir()} == {"tokens.bin", "meta.json", "tokenizer.json"}
    assert not list((tmp_path / "cache").glob(".staging-*"))
    monkeypatch.undo()
    corpus.write_text(SHAKESPEARE.read_text()[:30_001])
    assert prepare_dataset(corpus, "char", 0, tmp_path / "cache").entry != first.entry


def test_an_interrupted_tokenization_leaves_nothing_behind(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:30_000])
    monkeypatch.setattr(CharTokenizer, "encode", lambda self, text: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(corpus, "char", 0, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    assert prepare_dataset(corpus, "char", 0, tmp_path / "cache").tokens.size == 30_000


@pytest.fixture(scope="module")
def corpus_data(tmp_path_factory):
    """Random letters: every window of ten tokens is unique, so a window identifies its place."""
    tmp = tmp_path_factory.mktemp("data")
    corpus = tmp / "corpus.txt"
    letters = np.random.default_rng(0).integers(0, 26, size=20_001)
    corpus.write_text("".join(chr(ord("a") + int(i)) for i in letters))
    return prepare_dataset(corpus, "char", 0, tmp / "cache")


def test_the_split_is_the_last_tenth(corpus_data):
    n = len(corpus_data.tokens)
    assert corpus_data.n_val == n // 10 and corpus_data.n_train == n - n // 10
    assert np.array_equal(corpus_data.val, corpus_data.tokens[corpus_data.n_train:])


def test_batches_are_a_pure_function_of_seed_and_step_and_cover_each_window_once_an_epoch(corpus_data):
    B, T = 4, 10
    x, y = corpus_data.train_batch(3, B, T, seed=7)
    again = corpus_data.train_batch(3, B, T, seed=7)
    assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])
    assert x.dtype == np.int32 and x.flags.c_contiguous and x.shape == (B, T)
    starts = []
    for step in range(corpus_data.steps_per_epoch(B, T)):
        x, y = corpus_data.train_batch(step, B, T, seed=7)
        for row_x, row_y in zip(x, y):
            start = int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(
                corpus_data.train, T)[::T] == row_x, axis=1))[0]) * T
            assert np.array_equal(row_y, corpus_data.train[start + 1:start + T + 1])
            starts.append(start)
    assert len(starts) == len(set(starts))  # no window twice in an epoch
    assert len(starts) == corpus_data.steps_per_epoch(B, T) * B
    next_epoch = corpus_data.train_batch(corpus_data.steps_per_epoch(B, T), B, T, seed=7)[0]
    assert not np.array_equal(next_epoch, corpus_data.train_batch(0, B, T, seed=7)[0])


def test_validation_batches_are_fixed_and_from_the_validation_split(corpus_data):
    batches = corpus_data.val_batches(4, 10, 3)
    assert len(batches) == 3
    again = corpus_data.val_batches(4, 10, 3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))
    val = corpus_data.val
    for x, y in batches:
        for row in x:
            windows = np.lib.stride_tricks.sliding_window_view(val, 10)
            assert np.any(np.all(windows == row, axis=1))


def test_a_sequence_longer_than_a_split_is_refused(corpus_data):
    with pytest.raises(UserError, match="--seq-len 5000"):
        corpus_data.validate_seq_len(5000)
