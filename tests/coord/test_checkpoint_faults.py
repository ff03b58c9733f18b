"""Checkpoints under faults: killed at every file operation of a save and a prune, the newest complete
checkpoint stays loadable; a damaged newest falls back to the one before; others' scratch is left alone."""

import fcntl
import json
import os
import shutil
import sys
import time

import numpy as np
import pytest
import structlog

from cllm.coord.checkpoints.store import (MARKER, list_checkpoints, load_checkpoint, load_training_state,
                                          prune_checkpoints, save_checkpoint)
from cllm.coord.data.tokenizer import CharTokenizer
from cllm.coord.errors import UserError

from .test_checkpoint import CFG, STATE, trained_params

TOKENIZER = CharTokenizer([chr(ord("a") + i) for i in range(26)] + list(" .,;:!?'\n-ABC"))  # and end-of-text: 40 ids
# file operations a kill can fall between (os.replace raises "os.rename"; ctypes calls are renameat2)
OPERATIONS = {"open", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate",
              "ctypes.call_function"}


def params_of_step(step: int) -> np.ndarray:
    return trained_params(CFG, seed=step)


def save(run, step, keep, seed=None):
    path = save_checkpoint(run, step, CFG, params_of_step(seed or step), TOKENIZER, STATE)
    prune_checkpoints(run, keep)
    return path


def killed_at(operation: int, action) -> bool:
    """Run ``action`` in a forked child killed (os._exit) at its ``operation``-th file operation;
    True if it was killed, False if it finished first."""
    pid = os.fork()
    if pid == 0:
        count = 0

        def hook(event, args):
            nonlocal count
            if event in OPERATIONS:
                count += 1
                if count == operation:
                    os._exit(9)

        sys.addaudithook(hook)
        try:
            action()
        except BaseException:
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 9), f"the save raised in the child (exit {code})"
    return code == 9


@pytest.mark.parametrize("scenario", ["rewrite the latest step", "advance and prune"])
def test_a_kill_at_any_file_operation_leaves_the_newest_checkpoint_loadable(tmp_path, scenario):
    template = tmp_path / "template"
    for step in (1, 2):
        save(template, step, keep=5)
    newest = 2
    if scenario == "rewrite the latest step":
        action = lambda: save(run, 2, keep=1, seed=22)  # noqa: E731  a SIGTERM right after a periodic checkpoint
        acceptable = {2: [params_of_step(2), params_of_step(22)]}
    else:
        action = lambda: save(run, 3, keep=1)  # noqa: E731
        acceptable = {2: [params_of_step(2)], 3: [params_of_step(3)]}
    operation, kills = 1, 0
    while True:
        run = tmp_path / f"run-{operation}"
        shutil.copytree(template, run)
        if not killed_at(operation, action):
            break
        kills += 1
        listed = list_checkpoints(run)
        assert listed and int(listed[-1].name.split("-")[1]) >= newest, f"killed at operation {operation}"
        for checkpoint in listed:  # everything listed as complete loads
            _, params, _, path = load_checkpoint(checkpoint)
            load_training_state(path)
            step = int(path.name.split("-")[1])
            assert any(np.array_equal(params, p) for p in acceptable.get(step, [params_of_step(step)]))
        save(run, 4, keep=1)  # the next run carries on in the same directory
        assert [p.name for p in list_checkpoints(run)] == ["checkpoint-00000004"]
        operation += 1
    assert kills > 10


def test_the_completion_marker_is_the_last_file_written(tmp_path):
    written = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and args[1] not in (None, "r", "rb") \
                and "tmp-" in os.fsdecode(args[0]) and recording:
            written.append(os.path.basename(os.fsdecode(args[0])))

    recording = True
    sys.addaudithook(hook)  # cannot be removed: it stops recording below
    try:
        path = save_checkpoint(tmp_path / "run", 1, CFG, params_of_step(1), TOKENIZER, STATE)
    finally:
        recording = False
    assert written[-1] == MARKER and len(written) >= 4  # model.safetensors is written by Rust, unseen here
    manifest = json.loads((path / MARKER).read_text())
    assert set(manifest["files"]) == {p.name for p in path.iterdir()} - {MARKER}


def test_a_checkpoint_without_its_marker_is_not_listed_and_loading_falls_back(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        save(run, step, keep=5)
    (run / "checkpoint-00000003" / MARKER).unlink()  # as a writer of an older version or a copy cut short
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-00000001", "checkpoint-00000002"]
    assert load_checkpoint(run).path.name == "checkpoint-00000002"


@pytest.mark.parametrize("damage", [
    lambda p: os.truncate(p / "model.safetensors", 100),
    lambda p: os.truncate(p / "training_state.npz", 10),
    lambda p: (p / "config.json").write_text("{}"),
    lambda p: (p / "tokenizer.json").unlink(),
], ids=["truncated-model", "truncated-state", "emptied-config", "no-vocabulary"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_with_one_warning(tmp_path, damage):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        save(run, step, keep=5)
    damage(run / "checkpoint-00000003")
    with structlog.testing.capture_logs() as logs:
        cfg, params, _, path = load_checkpoint(run)
    assert path.name == "checkpoint-00000002" and np.array_equal(params, params_of_step(2))
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "checkpoint_fallback" and warning["checkpoint"] == str(path)
    assert list(warning["skipped"]) == ["checkpoint-00000003"]


def test_a_run_directory_whose_checkpoints_are_all_damaged_is_one_clear_line(tmp_path):
    run = tmp_path / "run"
    save(run, 1, keep=5)
    os.truncate(run / "checkpoint-00000001" / "model.safetensors", 10)
    with pytest.raises(UserError, match="no checkpoint that loads.*checkpoint-00000001"):
        load_checkpoint(run)


def test_pruning_leaves_another_process_s_scratch_alone(tmp_path):
    run = tmp_path / "run"
    save(run, 1, keep=1)
    live, dead = run / ".checkpoint-00000009.tmp-4242-live", run / ".checkpoint-00000008.tmp-4343-dead"
    live.mkdir()
    dead.mkdir()
    old = time.time() - 3600
    for path in (live, dead):
        os.utime(path, (old, old))
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as another process still writing its checkpoint
    try:
        save(run, 2, keep=1)
        assert live.exists() and not dead.exists()
    finally:
        os.close(fd)


@pytest.mark.parametrize("key, value", [("n_positions", 10**400), ("n_positions", 2**40), ("n_embd", 2**20),
                                        ("n_layer", 10**6), ("vocab_size", 2**24), ("n_inner", 2**40)])
def test_a_config_asking_for_more_than_its_weights_hold_is_refused_before_allocating(tmp_path, key, value):
    path = save(tmp_path / "run", 1, keep=1)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, key: value}))
    started = time.monotonic()
    with pytest.raises(UserError, match=f"{key}|parameters"):
        load_checkpoint(path)
    assert time.monotonic() - started < 5  # no terabytes asked for, no million layers laid out


def test_a_training_state_of_the_wrong_shape_is_refused(tmp_path):
    path = save(tmp_path / "run", 1, keep=1)
    np.savez(path / "training_state.npz", **{**STATE, "run_state": np.zeros(3), "optimizer_step": np.zeros(2)})
    with pytest.raises(UserError, match="run_state has shape"):
        load_training_state(path)
    (path / "training_state.npz").write_bytes(b"")
    with pytest.raises(UserError, match="cannot be read"):
        load_training_state(path)


@pytest.mark.parametrize("flag, compression", [(0x1, None), (0x0, 99)], ids=["encrypted", "unknown-compression"])
def test_a_training_state_archive_with_odd_entries_is_refused(tmp_path, flag, compression):
    path = save(tmp_path / "run", 1, keep=1)
    data = bytearray((path / "training_state.npz").read_bytes())
    at = data.index(b"PK\x01\x02")  # the central directory's first entry: its flags, then its method
    data[at + 8:at + 10] = flag.to_bytes(2, "little")
    if compression is not None:
        data[at + 10:at + 12] = compression.to_bytes(2, "little")
    (path / "training_state.npz").write_bytes(bytes(data))
    with pytest.raises(UserError, match="cannot be read"):
        load_training_state(path)


def test_a_config_whose_activation_is_not_a_name_is_refused(tmp_path):
    path = save(tmp_path / "run", 1, keep=1)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "activation_function": ["gelu"]}))  # found by fuzzing
    with pytest.raises(UserError, match="activation_function"):
        load_checkpoint(path)
