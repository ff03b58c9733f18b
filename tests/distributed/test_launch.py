"""Telling an MPI launch from the environment, in one process: no mpiexec needed."""

import io
import json
import os
import subprocess
import sys

import pytest
import structlog

from cllm.coord.distributed.launch import Launch, detect, load_mpi
from cllm.coord.errors import UserError
from cllm.coord.logs import configure


def test_each_launchers_variables_give_the_rank_and_size():
    assert detect({"PMI_RANK": "1", "PMI_SIZE": "4"}) == Launch(1, 4, "a PMI launcher (MPICH's mpiexec)")
    assert detect({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}).launcher == "Open MPI's mpirun"
    assert detect({}) is None
    assert detect({"PMI_RANK": "0", "PMI_SIZE": "1"}) is None  # one rank is an ordinary run


@pytest.mark.parametrize("rank, size", [("x", "2"), ("2", "2"), ("-1", "2")])
def test_nonsense_launch_variables_are_one_clear_error(rank, size):
    with pytest.raises(UserError, match="start cllm with mpiexec, or unset them"):
        detect({"PMI_RANK": rank, "PMI_SIZE": size})


def test_a_launch_without_mpi4py_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if the extra were not installed
    with pytest.raises(UserError) as error:
        load_mpi(Launch(1, 2, "a PMI launcher (MPICH's mpiexec)"))
    assert str(error.value) == ("cllm was started as rank 1 of 2 by a PMI launcher (MPICH's mpiexec), but mpi4py is "
                                "not installed: pip install 'cllm[mpi]', or run cllm without mpiexec")


def python(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_"))}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=60)


def test_without_a_launch_mpi4py_is_never_imported():
    run = python("import sys; from cllm.coord.distributed.ranks import join; from cllm.coord.cli.main import main; "
                 "assert join(1.0) is None; print('mpi4py' in sys.modules)")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_variables_that_do_not_match_the_mpi_library_are_refused():
    # PMI variables without a PMI server: MPI starts a singleton, one rank where two were announced
    run = python("from cllm.coord.distributed.ranks import join\n"
                 "from cllm.coord.errors import UserError\n"
                 "try:\n    join(1.0)\nexcept UserError as error:\n    print(error)", PMI_RANK="0", PMI_SIZE="2")
    assert run.returncode == 0, run.stderr
    assert "started 2 ranks but mpi4py's MPI library sees 1" in run.stdout


def logged(rank, level="info"):
    out = io.StringIO()
    configure("json", level, stream=out, rank=rank)
    log = structlog.get_logger("test")
    log.info("step", step=1)
    log.warning("step_skipped", step=2)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_line_carries_the_rank_and_only_rank_0_writes_the_run_log():
    assert [(e["event"], e["rank"]) for e in logged(0)] == [("step", 0), ("step_skipped", 0)]
    assert [(e["event"], e["rank"]) for e in logged(1)] == [("step_skipped", 1)]
    assert [e["event"] for e in logged(1, "debug")] == ["step", "step_skipped"]
    assert ["rank" in e for e in logged(None)] == [False, False]
    configure("json")
