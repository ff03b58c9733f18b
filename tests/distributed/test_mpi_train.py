"""`cllm` under `mpiexec -n 2`: what every rank says and does."""

from .mpirun import mpiexec


def test_a_bad_command_line_is_refused_by_every_rank_with_one_line_and_status_2():
    run = mpiexec("-m", "cllm.coord", "train", "--batch-size", "0", timeout=120)
    assert run.returncode == 2
    line = "cllm: error: argument --batch-size: 0 must be a positive integer (see 'cllm train --help')"
    # mpiexec can write one rank's newline after the other rank's line: count the lines, not the newlines
    assert run.stderr.count(line) == 2 and run.stderr.replace(line, "").strip() == ""
    assert run.stdout == ""
