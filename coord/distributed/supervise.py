"""A rank's supervisor: under mpiexec, `cllm` runs the rank in a child process and waits for it.

A rank killed outright (SIGKILL, the kernel's OOM killer, a crash in a kernel) can say nothing,
and no other rank lives long enough to say it for it: MPICH's launcher kills every rank's
process group at once as soon as one process ends badly (even with -disable-auto-cleanup,
measured with strace: the survivors get SIGKILL within milliseconds). So each rank is two
processes. This one, which the launcher started, imports neither numpy nor MPI: it starts the
rank, waits, and when the rank dies of a signal writes one line naming it, then dies of the
same signal, so that the launcher sees what it saw before. Signals reach the rank directly:
the launcher and systemd signal the whole process group, which this process ignores.
"""

import os
import signal
import socket
import subprocess
import sys

from ..errors import UserError
from .launch import Launch, detect

SUPERVISED = "CLLM_RANK_SUPERVISED"  # set in the rank's own environment: it is not supervised twice
IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
PMI_FD = "PMI_FD"  # the descriptor MPICH's launcher gives a rank to reach it: the rank needs it open


def launch_to_supervise(environ=None) -> Launch | None:
    """The MPI launch this process was started by, unless it is already the supervised rank. An environment
    that does not make sense is left to the rank itself, which says what is wrong with it."""
    environ = os.environ if environ is None else environ
    if environ.get(SUPERVISED):
        return None
    try:
        return detect(environ)
    except UserError:
        return None


def supervise(launch: Launch, argv: list, say) -> int:
    """Run ``cllm argv`` as rank ``launch.rank`` in a child process; its exit status. ``say(line)`` writes the
    line naming a rank killed by a signal (on standard error, as every line that ends a command)."""
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    keep = (int(os.environ[PMI_FD]),) if os.environ.get(PMI_FD, "").isdigit() else ()
    rank = subprocess.Popen([sys.executable, "-m", "cllm.coord", *argv], env={**os.environ, SUPERVISED: "1"},
                            pass_fds=keep, preexec_fn=default_signals)
    status = rank.wait()
    if status >= 0:
        return status
    name = signal.Signals(-status).name
    say(f"cllm: error: rank {launch.rank} of {launch.size} (pid {rank.pid} on {socket.gethostname()}) was killed by "
        f"{name}; the launcher ends the other ranks, and --resume continues from the last checkpoint")
    sys.stdout.flush()
    sys.stderr.flush()
    if -status in IGNORED:
        signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)  # the launcher sees the rank die of the signal it died of
    return 128 - status


def default_signals() -> None:
    """In the rank, before it starts: the signals this process ignores are the rank's to handle."""
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_DFL)
