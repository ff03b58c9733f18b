"""Source files as shards of the token stream: the cache records where each file's tokens begin, and the cursor
marks each step whose rows cross from one file into the next (BOUNDARY_CROSSING "shard")."""

import json

import numpy as np
import pytest
import structlog

from cllm.coord.data import dataset as dataset_module
from cllm.coord.data.dataset import prepare_dataset
from cllm.coord.data.tokenizer import EOS
from cllm.coord.training.cursor import Cursor
from cllm.protocol.messages import MessageType as M

from .runs import SHAKESPEARE, TINY_MODEL, cllm, events

T, ROWS = 16, 4
SIZES = {"a/one.txt": 700, "a/tiny.txt": 5, "b.txt": 1300, "c/d/short.txt": 40, "e.txt": 900, "f.txt": 2000}


def letters(n: int, seed: int) -> str:
    """Random lowercase letters: every window of 16 of them is unique in the corpus, so a row tells its place."""
    return "".join(chr(ord("a") + int(i)) for i in np.random.default_rng(seed).integers(0, 26, size=n))


def write_tree(root, texts: dict) -> None:
    for name, text in texts.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Six files of random letters, of very different sizes, in subdirectories; an empty file and a binary one
    beside them give no shard."""
    root = tmp_path_factory.mktemp("shards") / "corpus"
    texts = {name: letters(size, seed) for seed, (name, size) in enumerate(SIZES.items())}
    write_tree(root, texts)
    (root / "a" / "empty.txt").write_text("")
    (root / "blob.bin").write_bytes(b"\x00\x01binary")
    return root, texts


def token_starts(texts: list, tokenizer) -> list:
    """Where each text begins in the stream of them joined by end-of-text, each prefix encoded whole."""
    return [len(tokenizer.encode(EOS.join(texts[:k]) + EOS)) if k else 0 for k in range(len(texts))]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_the_cache_records_the_name_and_first_token_of_each_source_file(tree, tmp_path, monkeypatch, kind):
    root, texts = tree
    monkeypatch.setattr(dataset_module, "CHUNK_CHARS", 997)  # chunks end inside files as well as between them
    data = prepare_dataset(root, kind, 300, tmp_path / "cache")
    names = sorted(SIZES)  # the walk's order
    assert data.shards.names == tuple(names)
    ordered = [texts[name] for name in names]
    if kind == "char":  # one token per character, one separator between files
        assert data.shards.starts == tuple(np.cumsum([0] + [SIZES[n] + 1 for n in names[:-1]]).tolist())
    assert list(data.shards.starts) == token_starts(ordered, data.tokenizer)
    assert np.array_equal(data.tokens, data.tokenizer.encode(EOS.join(ordered)))  # the cuts change no token
    meta = json.loads((data.entry / "meta.json").read_text())
    assert meta["shards"] == [{"name": n, "start": s} for n, s in zip(names, data.shards.starts)]


def test_a_single_file_is_one_shard_and_its_rows_cross_documents_only(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": letters(300, seed)}) + "\n" for seed in range(8)))
    data = prepare_dataset(jsonl, "char", 0, tmp_path / "cache")
    assert data.shards.names == ("docs.jsonl",) and data.shards.starts == (0,)
    cursor = Cursor(data, ROWS, T, seed=3)
    crossings = [m.payload for step in range(1, 2 * cursor.per_epoch + 1) for m in cursor.batch(step).before
                 if m.type is M.BOUNDARY_CROSSING]
    assert crossings and {c.kind for c in crossings} == {"document"}


def test_the_same_documents_split_otherwise_or_named_otherwise_are_another_entry(tmp_path):
    one, two = letters(500, 1), letters(500, 2)
    write_tree(tmp_path / "tree", {"x.txt": one, "y.txt": two})
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"text": one}) + "\n" + json.dumps({"text": two}) + "\n")
    files = prepare_dataset(tmp_path / "tree", "char", 0, tmp_path / "cache")
    lines = prepare_dataset(jsonl, "char", 0, tmp_path / "cache")
    assert np.array_equal(files.tokens, lines.tokens) and files.entry != lines.entry
    assert files.shards.starts == (0, 501) and lines.shards.starts == (0,)
    (tmp_path / "tree" / "y.txt").rename(tmp_path / "tree" / "z.txt")
    renamed = prepare_dataset(tmp_path / "tree", "char", 0, tmp_path / "cache")
    assert renamed.entry != files.entry and renamed.shards.names == ("x.txt", "z.txt")


@pytest.mark.parametrize("damage", [
    lambda meta: meta.pop("shards"),  # an entry written before the offsets were kept
    lambda meta: meta["shards"].reverse(),
    lambda meta: meta["shards"][-1].update(start=meta["n_tokens"]),
    lambda meta: meta["shards"][2].update(start=meta["shards"][2]["start"] + 1),  # not after a separator
    lambda meta: meta["shards"][0].update(name=7),
], ids=["no-offsets", "out-of-order", "past-the-end", "misplaced", "bad-name"])
def test_an_entry_without_true_shard_offsets_is_rebuilt(tree, tmp_path, damage):
    root, _ = tree
    first = prepare_dataset(root, "char", 0, tmp_path / "cache")
    shards, clean = first.shards, np.array(first.tokens)
    meta = json.loads((first.entry / "meta.json").read_text())
    damage(meta)
    (first.entry / "meta.json").write_text(json.dumps(meta))
    del first
    with structlog.testing.capture_logs() as logs:
        again = prepare_dataset(root, "char", 0, tmp_path / "cache")
    assert [e["action"] for e in logs if e["event"] == "cache_entry_damaged"] == ["rebuilt"]
    assert again.shards == shards and np.array_equal(again.tokens, clean)


def expected_crossings(data, stream_ends: list, x: np.ndarray) -> tuple:
    """(positions, shards) of the file-ending separators in the rows ``x``, each row found in the training split
    by its letters."""
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(data.train), T)
    place = {window.tobytes(): start for start, window in enumerate(windows)}
    positions, shards = [], []
    for row, tokens in enumerate(x):
        start = place[tokens.astype(windows.dtype).tobytes()]
        for shard, end in enumerate(stream_ends, start=1):
            if start <= end < start + T:
                positions.append(row * T + end - start)
                shards.append(shard)
    return positions, shards


def test_the_cursor_marks_every_file_boundary_inside_a_step_s_rows_at_its_position(tree, tmp_path):
    root, _ = tree
    data = prepare_dataset(root, "char", 0, tmp_path / "cache")
    names = sorted(SIZES)
    # a file ends with the separator before the next file's first character: one token per character
    stream_ends = (np.cumsum([SIZES[n] + 1 for n in names[:-1]]) - 1).tolist()
    cursor = Cursor(data, ROWS, T, seed=5)
    seen = 0
    for step in range(1, 2 * cursor.per_epoch + 1):
        batch = cursor.batch(step)
        by_kind = {m.payload.kind: m.payload for m in batch.before if m.type is M.BOUNDARY_CROSSING}
        positions, shards = expected_crossings(data, stream_ends, batch.tokens)
        if not positions:
            assert "shard" not in by_kind
            continue
        crossing = by_kind["shard"]
        assert (crossing.step, crossing.positions, crossing.shards) == (step, positions, shards)
        assert crossing.names == [names[s] for s in shards]
        assert set(crossing.positions) <= set(by_kind["document"].positions)  # a file boundary is a document's
        seen += len(positions)
    # each separator of the training split lies in one window, which each epoch uses unless it is among the
    # few left over from the last full batch: over two epochs, most are crossed twice
    assert len(stream_ends) <= seen <= 2 * len(stream_ends)


def shard_events(stdout: str) -> list:
    return [(e["step"], e["positions"], e["shards"], e["names"])
            for e in events(stdout) if e["event"] == "shard_crossed"]


def test_a_resumed_run_crosses_the_same_files_at_the_same_steps_as_an_uninterrupted_one(tmp_path):
    corpus = tmp_path / "plays"
    text = SHAKESPEARE.read_text()[:24_000]
    write_tree(corpus, {f"part{i:02d}.txt": text[i * 600:(i + 1) * 600] for i in range(40)})
    common = [*TINY_MODEL, "--threads", "2", "--log-format", "json", "--log-level", "debug", "--cache-dir",
              tmp_path / "cache"]
    straight = cllm("train", corpus, *common, "--steps", "30", "--checkpoint-dir", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    first = cllm("train", corpus, *common, "--steps", "15", "--checkpoint-dir", tmp_path / "run")
    assert first.returncode == 0, first.stderr
    second = cllm("train", *common, "--steps", "30", "--resume", tmp_path / "run")
    assert second.returncode == 0, second.stderr
    expected = shard_events(straight.stdout)
    assert {step <= 15 for step, *_ in expected} == {True, False}  # crossings before and after the resume
    assert shard_events(first.stdout) + shard_events(second.stdout) == expected
    for result in (straight, first, second):
        finished = next(e for e in events(result.stdout) if e["event"] == "train_finished")
        assert finished["shards"] == sum(len(positions) for _, positions, *_ in shard_events(result.stdout)) > 0
        assert 0 < finished["shards"] <= finished["documents"]
