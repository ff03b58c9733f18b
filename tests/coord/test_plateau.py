"""The plateau schedule in a real run: the learning rate falls by the factor when validation stalls, and a
run stopped anywhere and resumed takes the same rates and ends with the same weights, bit for bit."""

import numpy as np

from cllm.coord.checkpoints.store import list_checkpoints, load_checkpoint

from .runs import TINY_MODEL, cllm, events, small_corpus

PLATEAU = ["--lr-schedule", "plateau", "--learning-rate", "0.03", "--lr-factor", "0.5", "--lr-patience", "1",
           "--min-lr", "0.001", "--eval-interval", "4", "--eval-batches", "2", "--log-interval", "1",
           "--checkpoint-interval", "0", "--threads", "2"]


def train(corpus, run, cache, *extra):
    result = cllm("train", corpus, *TINY_MODEL, *PLATEAU, "--checkpoint-dir", run, "--cache-dir", cache, *extra)
    assert result.returncode == 0, result.stderr
    return events(result.stdout)


def test_plateau_reduces_when_validation_stalls_and_resumes_bitwise(tmp_path):
    corpus, cache = small_corpus(tmp_path), tmp_path / "cache"
    log = train(corpus, tmp_path / "straight", cache, "--steps", 40)
    evals = [e for e in log if e["event"] == "eval" and e["step"] % 4 == 0]
    reduced = [e for e in log if e["event"] == "lr_reduced"]
    assert reduced, "validation never stalled at this learning rate"
    rates = {e["step"]: e["lr"] for e in log if e["event"] == "step"}
    best, count = float("inf"), 0
    for e in evals:  # patience 1: every evaluation that does not beat the best halves the rate
        if e["val_loss"] < best:
            best = e["val_loss"]
        elif e["step"] < 40:
            count += 1
            assert rates[e["step"] + 1] == max(0.001, 0.03 * 0.5 ** count), e
    assert [e["reductions"] for e in reduced] == list(range(1, len(reduced) + 1))
    assert rates[1] == 0.03

    stopped = tmp_path / "stopped"
    train(corpus, stopped, cache, "--steps", 18)  # not on the evaluation interval
    resumed = cllm("train", "--resume", stopped, "--steps", 40, "--threads", 2, "--cache-dir", cache,
                   "--log-interval", 1)
    assert resumed.returncode == 0, resumed.stderr
    again = {e["step"]: e["lr"] for e in events(resumed.stdout) if e["event"] == "step"}
    assert again == {step: lr for step, lr in rates.items() if step > 18}
    straight = load_checkpoint(list_checkpoints(tmp_path / "straight")[-1]).params
    assert np.array_equal(load_checkpoint(list_checkpoints(stopped)[-1]).params, straight)


def test_plateau_without_evaluations_is_refused(tmp_path):
    result = cllm("train", small_corpus(tmp_path), "--lr-schedule", "plateau", "--eval-interval", "0",
                  "--checkpoint-dir", tmp_path / "run")
    assert result.returncode == 2 and "plateau" in result.stderr and "--eval-interval" in result.stderr
