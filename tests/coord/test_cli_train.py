"""`cllm train` as a user runs it: a real process, JSON events, a checkpoint, clear refusals."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"


def cllm(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "cllm.coord", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def events(stdout: str) -> list:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def small_corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(SHAKESPEARE.read_text()[:60_000])
    return path


def test_train_learns_logs_json_and_writes_a_checkpoint(tmp_path, small_corpus):
    run = tmp_path / "run"
    result = cllm("train", small_corpus, "--tokenizer", "char", "--embed-dim", "32", "--num-layers", "2",
                  "--num-heads", "2", "--seq-len", "32", "--batch-size", "8", "--steps", "60",
                  "--learning-rate", "3e-3", "--threads", "2", "--checkpoint-dir", run,
                  "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    log = events(result.stdout)  # not a terminal: one JSON object per line
    assert all({"timestamp", "level", "event"} <= set(e) for e in log)
    steps = [e for e in log if e["event"] == "step"]
    assert steps[0]["step"] == 1 and steps[-1]["step"] == 60
    assert all({"loss", "lr", "grad_norm", "tokens_per_s"} <= set(e) for e in steps)
    finished = next(e for e in log if e["event"] == "train_finished")
    assert finished["val_loss"] < steps[0]["loss"] - 0.5  # it learned something real
    saved = next(e for e in log if e["event"] == "checkpoint_saved")
    checkpoint = Path(saved["path"])
    assert checkpoint.parent == run
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "generation_config.json"} <= {p.name for p in checkpoint.iterdir()}
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "does not exist"),
    (["{empty}"], "empty"),
    (["{small}", "--seq-len", "100000"], "--seq-len"),
    (["{small}", "--seq-len", "4096", "--batch-size", "1024"], "GiB of memory"),
    (["{small}", "--embed-dim", "30", "--num-heads", "4"], "not divisible by --num-heads"),
    (["{small}", "--batch-size", "0"], "--batch-size: 0 must be a positive integer"),
    (["{small}", "--embed-dim", "-8"], "--embed-dim: -8 must be a positive integer"),
    (["{small}", "--beta1", "1.5"], "--beta1: 1.5 must be a number in [0, 1)"),
    (["{small}", "--beta2", "1"], "--beta2: 1 must be a number in [0, 1)"),
    (["{small}", "--threads", "1100"], "--threads: 1100 must be an integer from 0 to 1024"),
    (["{small}", "--tokenizer", "word"], "invalid choice"),
    (["{small}", "--learning-rate", "nan"], "nan must be a finite number >= 0"),
    (["{small}", "--steps", "3", "--epochs", "2"], "not allowed with"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, small_corpus, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    paths = {"missing": tmp_path / "nope.txt", "empty": empty, "small": small_corpus}
    run = tmp_path / "run"
    argv = [a.format(**paths) for a in args]
    length = [] if "--steps" in argv or "--epochs" in argv else ["--steps", "2"]
    result = cllm("train", *argv, *length, "--checkpoint-dir", run, "--cache-dir", tmp_path / "cache")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cllm: error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not run.exists()
