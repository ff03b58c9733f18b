"""`cllm plot`: a PNG of one run or several, the same curves in the terminal, and clear refusals."""

import json
import math
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from cllm.coord.cli.main import main

from .runs import cllm

ORANGE = np.array([0xFF, 0x7F, 0x0E]) / 255  # matplotlib's second colour, the second run's


def write_run(directory, steps: int = 200, rate: float = 0.01, eval_every: int = 50):
    """A run directory whose metrics.jsonl has a falling loss, in the format cllm train writes."""
    directory.mkdir()
    with open(directory / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            record = {"step": step, "loss": 2.0 + 2.0 * math.exp(-rate * step), "lr": 1e-3, "grad_norm": 1.0,
                      "tokens_per_s": 4000.0 + step, "wall_s": step * 0.5, "time": "2026-11-30T10:00:00.000Z"}
            if step % eval_every == 0:
                record["val_loss"] = record["loss"] + 0.1
            f.write(json.dumps(record) + "\n")
    return directory


def png_pixels(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def has_colour(pixels, colour) -> bool:
    return bool((np.abs(pixels[..., :3] - colour).max(axis=-1) < 0.02).any())


def test_plot_writes_a_png_of_one_run(tmp_path):
    run = write_run(tmp_path / "run")
    result = cllm("plot", run, "-o", tmp_path / "one.png")
    assert result.returncode == 0, result.stderr
    pixels = png_pixels(tmp_path / "one.png")
    assert pixels.shape[:2] == (700, 1000)
    assert pixels[..., :3].std() > 0.01  # something is drawn
    assert not has_colour(pixels, ORANGE)


def test_plot_overlays_two_runs(tmp_path):
    first, second = write_run(tmp_path / "slow"), write_run(tmp_path / "fast", steps=120, rate=0.05)
    result = cllm("plot", first, second / "metrics.jsonl", "-o", tmp_path / "two.png")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'two.png'}"
    pixels = png_pixels(tmp_path / "two.png")
    assert pixels.shape[:2] == (700, 1000)
    assert has_colour(pixels, ORANGE)  # the second run is drawn in its own colour


def test_terminal_chart_draws_the_falling_curve_and_a_legend(tmp_path):
    first, second = write_run(tmp_path / "slow"), write_run(tmp_path / "fast", steps=120, rate=0.05)
    result = cllm("plot", "--terminal", first, second)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    grid = [line.split("|", 1)[1] for line in lines if "|" in line]
    assert len(grid) >= 10 and all(len(line) <= 80 - 10 for line in grid)
    rows_of = {mark: [r for r, line in enumerate(grid) if mark in line] for mark in "*o+x"}
    assert all(rows_of.values())  # both runs' training (* +) and validation (o x) marks
    assert grid[0][0] in "*+" and "+" in grid[-1]  # both start at the top left; the fast run ends lowest
    assert lines[-2].startswith("* o  slow: 200 steps, last loss 2.2707, best val loss 2.3707")
    assert lines[-1].startswith("+ x  fast: 120 steps")
    assert lines[-3].split()[:2] == ["1", "200"]


def test_without_matplotlib_a_png_is_one_line_and_the_terminal_still_draws(tmp_path):
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is hidden')\n")
    run = write_run(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "blocker")}
    png = subprocess.run([sys.executable, "-m", "cllm.coord", "plot", str(run), "-o", str(tmp_path / "x.png")],
                         capture_output=True, text=True, env=env)
    assert png.returncode == 2
    assert png.stderr.strip().splitlines() == [
        "cllm: error: cllm plot needs matplotlib for a PNG: pip install 'cllm[plot]', or draw in the terminal "
        "with cllm plot --terminal"]
    assert not (tmp_path / "x.png").exists()
    terminal = subprocess.run([sys.executable, "-m", "cllm.coord", "plot", "--terminal", str(run)],
                              capture_output=True, text=True, env=env)
    assert terminal.returncode == 0, terminal.stderr
    assert "run: 200 steps" in terminal.stdout


def test_a_torn_last_line_is_left_out_with_a_warning(tmp_path):
    run = write_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 201, "loss": 2.')
    result = cllm("plot", "--terminal", run)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"cllm: warning: {run / 'metrics.jsonl'}: its last line (line 201) is cut " \
                                    "short and left out"
    assert "200 steps" in result.stdout


def history(content: bytes):
    def make(directory):
        (directory / "metrics.jsonl").write_bytes(content)
        return directory
    return make


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: d, "has no metrics.jsonl"),
    (history(b""), "has no steps yet"),
    (history(b'{"step": 1, "loss": 3}\nnot json\n{"step": 3, "loss": 2}\n'), "line 2 is not a step record"),
    (history(b'{"step": 1, "loss": "3"}\n{"step": 2, "loss": 2}\n'), "line 1 is not a step record"),
    (history(b'\xff\xfe\x00garbage\n{"step": 2}\n'), "line 1 is not a step record"),
    (history(b'[1, 2]\n{"step": 2}\n'), "line 1 is not a step record"),
])
@pytest.mark.parametrize("terminal", [[], ["--terminal"]])
def test_bad_histories_are_one_line_and_exit_2(tmp_path, capsys, make, message, terminal):
    run = make(tmp_path)
    assert main(["plot", *terminal, str(run), "-o", str(tmp_path / "out.png")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cllm: error: ") and message in lines[0], lines
    assert not (tmp_path / "out.png").exists()


def test_an_output_that_is_not_png_is_refused(tmp_path, capsys):
    assert main(["plot", str(write_run(tmp_path / "run")), "-o", str(tmp_path / "loss.jpg")]) == 2
    assert "give a name ending in .png" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path, capsys):
    assert main(["plot", str(write_run(tmp_path / "run")), "-o", str(tmp_path / "missing" / "loss.png")]) == 2
    assert capsys.readouterr().err.strip().endswith("cannot be written (No such file or directory); give another -o")
    (tmp_path / "readonly").mkdir(mode=0o555)
    if os.access(tmp_path / "readonly", os.W_OK):  # root writes anyway: a file in the way of the rename instead
        (tmp_path / "readonly" / "loss.png").mkdir()
    assert main(["plot", str(tmp_path / "run"), "-o", str(tmp_path / "readonly" / "loss.png")]) == 2
    assert "cannot be written" in capsys.readouterr().err
    assert not [p for p in (tmp_path / "readonly").iterdir() if p.name.startswith(".")]
