"""Is this process one rank of an MPI launch? Told by the launcher's environment, without importing mpi4py.

`mpiexec` sets variables in every process it starts: MPICH's hydra (and Intel MPI, MVAPICH)
PMI_RANK and PMI_SIZE, Open MPI OMPI_COMM_WORLD_RANK and OMPI_COMM_WORLD_SIZE. A launch of
one process is an ordinary run: mpi4py is imported only when there are several ranks, so
CLLM without the `mpi` extra never imports it.
"""

import os
from dataclasses import dataclass

from ..errors import UserError

LAUNCHERS = (  # (rank variable, size variable, who sets them)
    ("PMI_RANK", "PMI_SIZE", "a PMI launcher (MPICH's mpiexec)"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun"),
)
INSTALL = "pip install 'cllm[mpi]'"


@dataclass(frozen=True)
class Launch:
    rank: int
    size: int
    launcher: str


def detect(environ=None) -> Launch | None:
    """The launch this process belongs to, or None for a single process (no launcher, or one rank)."""
    environ = os.environ if environ is None else environ
    for rank_name, size_name, launcher in LAUNCHERS:
        if rank_name in environ and size_name in environ:
            try:
                rank, size = int(environ[rank_name]), int(environ[size_name])
            except ValueError:
                raise UserError(f"{rank_name}={environ[rank_name]!r} and {size_name}={environ[size_name]!r} are "
                                "not whole numbers; start cllm with mpiexec, or unset them") from None
            if not 0 <= rank < size:
                raise UserError(f"{rank_name}={rank} is not a rank of {size_name}={size}; start cllm with mpiexec, "
                                "or unset them")
            return Launch(rank, size, launcher) if size > 1 else None
    return None


def load_mpi(launch: Launch):
    """mpi4py's MPI module, initialised for threads; one clear line when it is missing or mismatched."""
    try:
        import mpi4py
    except ImportError:
        raise UserError(f"cllm was started as rank {launch.rank} of {launch.size} by {launch.launcher}, but mpi4py "
                        f"is not installed: {INSTALL}, or run cllm without mpiexec") from None
    mpi4py.rc.thread_level = "multiple"  # the event loop's heartbeats beside the communication thread
    try:
        from mpi4py import MPI
    except RuntimeError as error:  # mpi4py is there but finds no MPI library
        raise UserError(f"mpi4py cannot load an MPI library ({error}): {INSTALL}") from None
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        raise UserError(f"the MPI library ({MPI.Get_library_version().splitlines()[0].strip()}) does not support "
                        f"threads (MPI_THREAD_MULTIPLE); {INSTALL} brings one that does")
    if MPI.COMM_WORLD.Get_size() != launch.size:
        raise UserError(f"{launch.launcher} started {launch.size} ranks but mpi4py's MPI library sees "
                        f"{MPI.COMM_WORLD.Get_size()}: launch with the mpiexec of the MPI that mpi4py uses "
                        "(the one installed beside it)")
    return MPI
