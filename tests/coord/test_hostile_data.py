"""Damaged caches, huge lines, binary blobs, links out of the tree, deep JSON: one clear line or a skip, bounded memory."""

import fcntl
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import structlog

from cllm.coord.data.dataset import prepare_dataset
from cllm.coord.errors import UserError

from .runs import SHAKESPEARE, texts


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(SHAKESPEARE.read_text()[:20_000])
    return path


def events(logs, name) -> list:
    return [e for e in logs if e["event"] == name]


def test_token_ids_beyond_the_vocabulary_in_a_damaged_cache_are_found_and_the_entry_rebuilt(corpus, tmp_path):
    first = prepare_dataset(corpus, "char", 0, tmp_path / "cache")
    clean = np.array(first.tokens)
    vocab = first.tokenizer.vocab_size
    with open(first.entry / "tokens.bin", "r+b") as f:
        f.seek(200)
        f.write(np.array([vocab, 60_000], dtype=np.uint16).tobytes())  # would index past the embedding
    del first
    with structlog.testing.capture_logs() as logs:
        again = prepare_dataset(corpus, "char", 0, tmp_path / "cache")
    assert int(again.tokens.max()) < vocab and np.array_equal(again.tokens, clean)
    (damaged,) = events(logs, "cache_entry_damaged")
    assert "beyond the vocabulary" in damaged["reason"]


@pytest.mark.parametrize("damage", [
    lambda entry: os.truncate(entry / "tokens.bin", 1001),
    lambda entry: (entry / "meta.json").write_text('{"n_tokens": "many"}'),
    lambda entry: (entry / "meta.json").write_text("[" * 100_000),
    lambda entry: (entry / "tokenizer.json").unlink(),
], ids=["truncated", "bad-meta", "deep-meta", "no-vocabulary"])
def test_a_truncated_or_damaged_cache_entry_is_rebuilt(corpus, tmp_path, damage):
    first = prepare_dataset(corpus, "char", 0, tmp_path / "cache")
    clean = np.array(first.tokens)
    damage(first.entry)
    del first
    with structlog.testing.capture_logs() as logs:
        again = prepare_dataset(corpus, "char", 0, tmp_path / "cache")
    assert np.array_equal(again.tokens, clean) and len(events(logs, "cache_entry_damaged")) == 1


def test_a_binary_file_is_skipped_from_its_first_bytes_without_reading_it_whole(tmp_path):
    (tmp_path / "a.txt").write_text("words")
    with open(tmp_path / "blob.bin", "wb") as f:
        f.write(b"\x7fELF\x00\x01")
        f.truncate(64 << 20)  # 64 MiB, sparse
    tracemalloc.start()
    try:
        with structlog.testing.capture_logs() as logs:
            assert texts(tmp_path) == ["words"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    assert [e["reason"] for e in events(logs, "corpus_file_skipped")] == ["binary"]


def peak_memory_to_prepare(path: Path, cache: Path) -> int:
    tracemalloc.start()
    try:
        dataset = prepare_dataset(path, "char", 0, cache)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(dataset.tokens) == path.stat().st_size
    return peak


@pytest.mark.parametrize("word", ["abcdefghijklmnopqrstuvwxyz 0123456789", "x"], ids=["words", "no-whitespace"])
def test_memory_does_not_grow_with_the_length_of_a_line(tmp_path, word):
    peaks = []
    for mib in (8, 24):
        line = tmp_path / f"line-{mib}.txt"
        with open(line, "w") as f:
            f.write(word * ((mib << 20) // len(word)))  # one line, no newline
        peaks.append(peak_memory_to_prepare(line, tmp_path / "cache"))
    assert peaks[1] < peaks[0] + (4 << 20), f"peak {peaks[0] >> 20} MiB for 8 MiB, {peaks[1] >> 20} MiB for 24 MiB"


def test_a_link_out_of_the_tree_is_not_followed(tmp_path):
    (tmp_path / "secret.txt").write_text("outside")
    tree = tmp_path / "corpus"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "inside.txt").write_text("inside")
    os.symlink("..", tree / "up")
    os.symlink(tmp_path / "secret.txt", tree / "leak.txt")
    os.symlink("sub", tree / "alias")  # inside the tree: read once, under its first name
    with structlog.testing.capture_logs() as logs:
        assert texts(tree) == ["inside"]
    reasons = {Path(e["path"]).name: e["reason"] for e in events(logs, "corpus_file_skipped")}
    assert reasons == {"leak.txt": "outside the corpus tree", "up": "outside the corpus tree"}


def test_the_cache_inside_the_corpus_directory_is_not_read_as_text(tmp_path):
    tree = tmp_path / "corpus"
    tree.mkdir()
    (tree / "a.txt").write_text(SHAKESPEARE.read_text()[:5000])
    first = prepare_dataset(tree, "char", 0, tree / ".cache")
    with structlog.testing.capture_logs() as logs:
        second = prepare_dataset(tree, "char", 0, tree / ".cache")
    assert second.entry == first.entry and events(logs, "dataset_cached")


@pytest.mark.parametrize("name, text", [
    ("deep.jsonl", '{"text": "fine"}\n{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
    ("deep.jsonl", "[" * 100_000 + "\n"),
    ("squad.json", json.dumps({"data": [{"paragraphs": [{"context": 5, "qas": []}]}]})),
    ("squad.json", json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": "what?"}]}]})),
    ("squad.json", json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q", "answers": [
        {"text": 7}]}]}]}]})),
    ("squad.json", json.dumps({"data": ["article"]})),
    ("squad.json", json.dumps({"data": [{"title": 3, "paragraphs": []}]})),
    ("lone.jsonl", '{"text": "\\udcff"}\n'),  # JSON can spell a lone surrogate; UTF-8 cannot
    ("squad.json", json.dumps({"data": [{"paragraphs": [{"context": "\udcff"}]}]})),
], ids=["jsonl-deep-text", "jsonl-deep-line", "squad-int-context", "squad-string-qas", "squad-int-answer",
        "squad-string-article", "squad-int-title", "jsonl-lone-surrogate", "squad-lone-surrogate"])
def test_json_that_is_too_deep_or_of_the_wrong_shape_is_one_clear_line(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=name) as error:
        texts(path)
    assert "\n" not in str(error.value)


def test_a_squad_file_nested_deeper_than_json_allows_is_read_as_text(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"data": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert texts(path) == [path.read_text()]


def test_stale_staging_files_of_killed_runs_are_removed_and_live_ones_kept(corpus, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = [cache / ".staging-99999-dead.txt", cache / ".0123-char.tmp-99999-dead"]
    stale[0].write_bytes(b"x" * 1000)
    stale[1].mkdir()
    live = cache / ".staging-1-live.txt"
    live.write_bytes(b"y")
    old = time.time() - 3600
    for path in stale + [live]:
        os.utime(path, (old, old))
    with open(live) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a run still tokenizing holds its staging file
        prepare_dataset(corpus, "char", 0, cache)
        assert not any(p.exists() for p in stale) and live.exists()


RACE = """
import sys
from cllm.coord.data.dataset import prepare_dataset
dataset = prepare_dataset(sys.argv[1], "bpe", 300, sys.argv[2])
print(dataset.entry, len(dataset.tokens))
"""


def test_two_first_runs_sharing_a_cache_both_succeed(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:150_000])
    runs = [subprocess.Popen([sys.executable, "-c", RACE, str(corpus), str(tmp_path / "cache")], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert results[0][0].splitlines()[-1] == results[1][0].splitlines()[-1]
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []
