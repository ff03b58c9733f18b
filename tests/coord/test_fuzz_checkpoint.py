"""Property-based fuzzing of the checkpoint loader: whatever is done to the files of a checkpoint, loading it
gives the checkpoint or one clear line (UserError), and its run directory still loads (the one before)."""

import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

from cllm.coord.checkpoints.store import load_checkpoint, load_training_state, save_checkpoint
from cllm.coord.data.tokenizer import BpeTokenizer, CharTokenizer
from cllm.coord.errors import UserError
from cllm.kernels.model import GPTConfig, init_params

from ..fuzzing import FUZZ, damaged, edits, replaced, rewrite, values
from .runs import SHAKESPEARE

STATE = {"optimizer_state": np.zeros((2, 10), np.float32), "optimizer_step": np.int64(3),
         "run_state": np.zeros(5), "settings": np.array('{"steps": 10}')}
FILES = ["config.json", "model.safetensors", "vocab.json", "tokenizer.json", "training_state.npz",
         "checkpoint_complete.json", "generation_config.json", "tokenizer_config.json"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two run directories of two checkpoints each, one with a character vocabulary, one with BPE."""
    made = {}
    for kind, tokenizer in (("char", CharTokenizer(sorted(set(SHAKESPEARE.read_text()[:5000])))),
                            ("bpe", BpeTokenizer.train([SHAKESPEARE.read_text()[:20_000]], 300))):
        cfg = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8)
        run = tmp_path_factory.mktemp(kind) / "run"
        for step in (1, 2):
            save_checkpoint(run, step, cfg, init_params(cfg, step), tokenizer, STATE)
        made[kind] = run
    return made


def damage_bytes(path, changes):
    if path.exists():
        rewrite(path, damaged(path.read_bytes(), changes))


def damage_json(path, where, value):
    if path.exists():
        try:
            obj = json.loads(path.read_text())
        except ValueError:
            return
        rewrite(path, json.dumps(replaced(obj, where, value) if isinstance(obj, (dict, list)) else value).encode())


damages = st.lists(st.one_of(
    st.tuples(st.just("bytes"), st.sampled_from(FILES), edits),
    st.tuples(st.just("json"), st.sampled_from(["config.json", "vocab.json", "checkpoint_complete.json",
                                                "tokenizer.json"]), st.tuples(st.lists(st.integers(0, 60), max_size=6),
                                                                             values)),
    st.tuples(st.just("delete"), st.sampled_from(FILES), st.none()),
    st.tuples(st.just("truncate"), st.sampled_from(FILES), st.integers(0, 4000))), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def pristine(runs):
    """The files of each run's newest checkpoint, to put back before every example."""
    return {kind: {p.name: p.read_bytes() for p in (run / "checkpoint-00000002").iterdir()} for kind, run in runs.items()}


def restore(checkpoint, files: dict) -> None:
    """``checkpoint`` as it was saved, rewritten in place (cheaper than copying the run for each example)."""
    for path in checkpoint.iterdir():
        if path.name not in files:
            path.unlink()
    for name, data in files.items():
        rewrite(checkpoint / name, data)


@FUZZ
@given(st.sampled_from(["char", "bpe"]), damages)
def test_a_damaged_checkpoint_loads_or_is_one_clear_line_and_its_run_falls_back(runs, pristine, kind, todo):
    run = runs[kind]
    newest = run / "checkpoint-00000002"
    restore(newest, pristine[kind])
    for action, name, detail in todo:
        path = newest / name
        if action == "bytes":
            damage_bytes(path, detail)
        elif action == "json":
            damage_json(path, *detail)
        elif action == "delete":
            path.unlink(missing_ok=True)
        elif path.exists():
            rewrite(path, path.read_bytes()[:detail])
    try:
        checkpoint = load_checkpoint(newest)
        load_training_state(checkpoint.path)
    except UserError as error:
        assert str(error) and "\n" not in str(error)
    assert load_checkpoint(run).path.name in ("checkpoint-00000001", "checkpoint-00000002")
