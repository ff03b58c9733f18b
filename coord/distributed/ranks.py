"""One run over several MPI ranks: each rank's share of the work, and the collectives between them.

Every collective runs on one communication thread of its own, in the order the event loop
issues them, which is the same on every rank; the loop awaits it under the step timeout and
never blocks. A collective that does not complete in time, or that MPI reports failed, ends
the run on this rank with one log line naming the rank at fault (see ``watch``), then
MPI_Abort, which makes the launcher end every other rank too. A rank that dies outright is
ended sooner by the launcher itself: MPICH's mpiexec kills the whole job when one process
exits badly, and the dead rank's supervisor names it (see ``supervise``).
"""

import asyncio
import atexit
import hashlib
from contextlib import contextmanager, nullcontext
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import structlog

from ..errors import OperationalError, RunFailed, UserError
from . import decision as words
from .launch import detect, load_mpi
from .watch import PeerWatch

log = structlog.get_logger("cllm.ranks")

POLL_FIRST_S, POLL_MAX_S = 10e-6, 200e-6  # a waiting collective is tested this often, backing off
LOST_EXIT = 1  # the exit status of every rank when one is lost, as for any run that cannot go on
ABORT_GRACE_S = 5.0  # MPI_Abort should end the process at once; past this, leave without it
FORWARD_S = 0.5  # time for the launcher to forward a rank's last lines before MPI_Abort
FAIL_GRACE_S = 1.0  # a rank that ends the run on an error waits this long before it ends the others
STAT_KEYS = ("batches", "tokens", "busy_s", "waiting_s")  # Node Zero's statistics, summed up the tree


def share(count: int, rank: int, size: int) -> tuple:
    """[a, b): rank ``rank``'s contiguous share of ``count`` items, as even as possible.

    The last ranks take the extra items: with two ranks the split falls where a pairwise sum
    over the items splits them, (a + b) // 2, so two ranks add the same two halves as one.
    """
    base, extra = divmod(count, size)
    start = rank * base + max(0, rank - (size - extra))
    return start, start + base + (1 if rank >= size - extra else 0)


def layer_buckets(layout, tail: int = 0) -> list:
    """[a, b) slices of a flat gradient (and ``tail`` words after it) in the order backward finishes
    them: the last block with the final LayerNorm and the words, each block down to the first, then
    the embeddings (the token embedding is also the head, so its gradient is final last)."""
    starts = [layout.offsets[f"h.{i}.ln_1.weight"] for i in range(layout.cfg.n_layer)]
    ends = starts[1:] + [layout.size + tail]
    return [(starts[i], ends[i]) for i in reversed(range(len(starts)))] + [(0, starts[0])]


def together(ranks, what: str, timeout: float | None = None):
    """``with together(ranks, what):`` is ``ranks.together``, and nothing for a process alone (``ranks`` None)."""
    return nullcontext() if ranks is None else ranks.together(what, timeout)


def join(timeout: float):
    """The Ranks of this process's MPI launch, or None when it runs alone."""
    launch = detect()
    if launch is None:
        return None
    mpi = load_mpi(launch)
    return Ranks(mpi, mpi.COMM_WORLD, timeout)


class Ranks:
    """This process's place among the ranks of one data-parallel run, and the collectives it joins."""

    def __init__(self, mpi, comm, timeout: float):
        self.mpi, self.comm, self.timeout = mpi, comm, timeout
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mpi")
        self.issued = self.entered = self.completed = 0  # collective numbers
        self.wait_s = 0.0  # time the event loop waited on collectives (communication not hidden by work)
        self.busy_s = 0.0  # time the communication thread spent inside MPI
        self.watch = PeerWatch(mpi, comm.Dup(), min(1.0, timeout / 10), lambda: (self.entered, self.completed))
        self.beating = None
        self.stopping = threading.Event()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def share(self, count: int) -> tuple:
        return share(count, self.rank, self.size)

    def start(self) -> None:
        """Start the heartbeats, and log where every rank runs (the launcher names a dead rank by its pid)."""
        self.beating = threading.Thread(target=self.heartbeat, name="rank-heartbeat", daemon=True)
        self.beating.start()
        atexit.register(self.stop_heartbeat)  # runs before mpi4py's MPI_Finalize, registered earlier
        where = self.run_sync("the ranks' hosts", self.comm.gather,
                              {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid()}, 0)
        if where is not None:
            log.info("ranks_joined", size=self.size, ranks=where)

    def close(self) -> None:
        """After the last collective of the run: every rank stops here together."""
        self.run_sync("the closing barrier", self.barrier)
        self.stop_heartbeat()
        self.thread.shutdown(wait=True)

    def stop_heartbeat(self) -> None:
        """Also at exit, whatever ended the run: no heartbeat may reach MPI after it is finalised."""
        self.stopping.set()
        if self.beating is not None:
            self.beating.join()

    def heartbeat(self) -> None:
        """On a thread of its own, so that ranks are heard from outside the event loop too (start-up, data)."""
        while not self.stopping.wait(self.watch.interval):
            self.watch.beat()

    # ----- collectives -----

    def submit(self, fn, *args) -> tuple:
        """Issue one collective on the communication thread: (its number, a concurrent future)."""
        self.issued += 1
        return self.issued, self.thread.submit(self.enter, self.issued, fn, args)

    def enter(self, seq: int, fn, args):
        self.entered = seq
        started = time.perf_counter()
        result = fn(*args)
        self.busy_s += time.perf_counter() - started
        self.completed = seq
        return result

    async def settle(self, issued: list, what: str) -> list:
        """Await collectives issued by ``submit``; a timeout or an MPI error ends the run (``lost``)."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.gather(*(asyncio.wrap_future(future) for _, future in issued))
        except TimeoutError:
            seq = next(seq for seq, future in issued if not future.done())
            self.lost(seq, what, time.perf_counter() - started)
        except self.mpi.Exception as error:
            seq = next(seq for seq, future in issued if future.done() and future.exception() is not None)
            self.lost(seq, what, time.perf_counter() - started, error)
        finally:
            self.wait_s += time.perf_counter() - started

    async def run(self, what: str, fn, *args):
        return (await self.settle([self.submit(fn, *args)], what))[0]

    def run_sync(self, what: str, fn, *args, timeout: float | None = None):
        """A collective awaited by blocking this thread: before the event loop runs (start-up, the data)."""
        seq, future = self.submit(fn, *args)
        started = time.perf_counter()
        try:
            return future.result(timeout or self.timeout)
        except TimeoutError:
            self.lost(seq, what, time.perf_counter() - started)
        except self.mpi.Exception as error:
            self.lost(seq, what, time.perf_counter() - started, error)
        finally:
            self.wait_s += time.perf_counter() - started

    @contextmanager
    def together(self, what: str, timeout: float | None = None):
        """``with ranks.together(what):`` around work that can fail on some ranks only (a file one rank cannot
        read, rank 0's run directory): every rank enters the block, and a UserError or OperationalError raised
        in it on any rank is raised on every rank as it leaves, so that no rank goes on to a collective that a
        failed rank will never join. The error is the lowest failing rank's, its message led by ``on rank N:``
        unless every rank failed alike. An error an inner block already agreed on passes as it is."""
        failure = None
        try:
            yield
        except (UserError, OperationalError) as error:
            if getattr(error, "agreed", False):
                raise
            failure = (isinstance(error, UserError), str(error))
        failures = self.run_sync(what, self.comm.allgather, failure, timeout=timeout)
        failed = [rank for rank, found in enumerate(failures) if found is not None]
        if not failed:
            return
        user, text = failures[failed[0]]
        if len(failed) < self.size or len(set(failures)) > 1:
            text = f"on rank {failed[0]}: {text}"
        error = (UserError if user else OperationalError)(text)
        error.agreed = True
        raise error

    def sum_in_place(self, buffer: np.ndarray) -> None:
        self.finish(self.comm.Iallreduce(self.mpi.IN_PLACE, buffer, op=self.mpi.SUM))

    def barrier(self) -> None:
        self.finish(self.comm.Ibarrier())

    @staticmethod
    def finish(request) -> None:
        """Wait for a non-blocking collective by testing it between short sleeps.

        MPICH's blocking calls spin a core while they wait for a late peer, and a spinning
        communication thread halves the speed of a worker beside it; polling costs at most a
        fifth of a millisecond once the data can move.
        """
        pause = POLL_FIRST_S
        while not request.Test():
            time.sleep(pause)
            pause = min(2 * pause, POLL_MAX_S)

    async def allreduce(self, buffer: np.ndarray, what: str) -> None:
        """Sum a contiguous float32 or float64 ``buffer`` over the ranks, in place."""
        await self.run(what, self.sum_in_place, buffer)

    def buckets(self, buffer: np.ndarray, bounds: list, what: str) -> "Buckets":
        return Buckets(self, buffer, bounds, what)

    async def agree(self, decision: words.Decision) -> words.Decision:
        """Every rank's view of rank 0's decision (and of any rank's stop), at the same boundary."""
        buffer = np.zeros(words.WORDS, dtype=np.float64)
        words.write(buffer, decision, self.rank)
        await self.allreduce(buffer, "the agreement on a step boundary")
        return words.read(buffer)

    async def sum_step(self, grad: np.ndarray, bounds: list, loss_sum: float, tokens: int, step: int) -> tuple:
        """A step's collectives: this rank's summed gradient ``grad`` (float32) summed over the ranks in
        place, in the buckets ``bounds`` (see ``layer_buckets``), and right behind it on the communication
        thread the step's loss sum and token count in float64. Returns the run's (loss_sum, tokens)."""
        sums = np.array([loss_sum, tokens], dtype=np.float64)
        what = f"the gradient allreduce of step {step}"
        buckets = self.buckets(grad, bounds, what)
        for k in range(len(bounds)):
            buckets.ready(k)
        await self.settle(buckets.issued + [self.submit(self.sum_in_place, sums)], what)
        return float(sums[0]), int(round(sums[1]))

    async def sum_scores(self, loss_sum: float, tokens: int, hits: int) -> tuple:
        """An evaluation's (loss sum, tokens, tokens predicted right) over the ranks, in float64."""
        sums = np.array([loss_sum, tokens, hits], dtype=np.float64)
        await self.allreduce(sums, "the sum of the validation losses")
        return float(sums[0]), int(round(sums[1])), int(round(sums[2]))

    async def gather(self, value, what: str):
        """Every rank's ``value`` (picklable) as a list on rank 0, None on the others."""
        return await self.run(what, self.comm.gather, value, 0)

    async def check_same(self, value: bytes, what: str) -> None:
        """UserError on every rank unless ``value`` is the same on all of them (settings, data, checkpoint)."""
        await self.run(f"the comparison of the ranks' {what}", self.same_everywhere, value, what)

    def same_everywhere(self, value: bytes, what: str) -> None:
        """``check_same``'s collective, on the communication thread."""
        digests = self.comm.allgather(hashlib.blake2b(value, digest_size=16).digest())
        differ = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if differ:
            raise UserError(f"the {what} of rank {', '.join(map(str, differ))} differ from rank 0's: give every rank "
                            "the same command line, configuration and data")

    async def check_weights(self, params: np.ndarray, step: int) -> None:
        """RunFailed on every rank unless every rank's weights are rank 0's, bit for bit (a checksum each)."""
        await self.run(f"the weights check of step {step}", self.compare_weights, params, step)

    def compare_weights(self, params: np.ndarray, step: int) -> None:
        """``check_weights``'s collective, on the communication thread."""
        digests = self.comm.allgather(hashlib.blake2b(params, digest_size=16).hexdigest())
        differ = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if differ:
            raise RunFailed(f"at step {step} the weights of rank {', '.join(map(str, differ))} differ from rank 0's "
                            f"(checksum {digests[differ[0]][:12]} against {digests[0][:12]}): the ranks no longer "
                            "train one model; resume from the last checkpoint")

    def stats(self) -> dict:
        return {"rank": self.rank, "communication_s": self.wait_s, "collective_s": self.busy_s,
                "collectives": self.completed}

    async def gather_stats(self, node_zero: dict):
        """The run's statistics on rank 0, ranks at the top of the tree (rank, groups, workers), each rank
        with its busy, waiting and communication seconds; None on the other ranks.

        ``node_zero`` is this rank's Node Zero statistics: batches, tokens, busy_s, waiting_s, children.
        """
        mine = {"rank": self.rank, **{key: node_zero[key] for key in STAT_KEYS},
                "communication_s": self.wait_s, "children": node_zero["children"]}
        reports = await self.gather(mine, "the ranks' statistics")
        if reports is None:
            return None
        return {"ranks": self.size, **{key: sum(r[key] for r in reports) for key in STAT_KEYS + ("communication_s",)},
                "children": reports}

    # ----- faults -----

    def lost(self, seq: int, what: str, waited: float, error=None):
        """A collective failed: one line naming the rank at fault, then every rank ends."""
        suspects = self.watch.suspects(seq)
        reason = "; ".join(why for _, why in suspects) or (
            f"MPI reported {error}" if error is not None else "no rank was seen to fail")
        log.error("rank_lost", failed=[rank for rank, _ in suspects], during=what, waited_s=round(waited, 1),
                  reason=reason)
        self.abort(LOST_EXIT)

    def fail(self, code: int):
        """End every rank with status ``code``, after this rank wrote why: a short grace first, so that ranks
        that met the same error (the same bad setting) write their own line too."""
        time.sleep(FAIL_GRACE_S)
        self.abort(code)

    def abort(self, code: int):
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(FORWARD_S)  # the launcher ends the job at once on MPI_Abort, and drops output not yet forwarded
        threading.Timer(ABORT_GRACE_S, os._exit, (code,)).start()
        self.comm.Abort(code)


class Buckets:
    """One buffer's sum-Allreduce in buckets, each issued once final, always in the order of ``bounds``.

    ``bounds`` lists [a, b) slices of ``buffer``, a function of the run's settings only (the
    MPI algorithm, hence the bits of the sum, can depend on a message's size). The event
    loop calls ``ready(k)`` as bucket k's sum on this rank is final, and awaits ``wait()``
    once the step's work is done: a bucket issued early travels while the rest is computed.
    """

    def __init__(self, ranks: Ranks, buffer: np.ndarray, bounds: list, what: str):
        self.ranks, self.buffer, self.bounds, self.what = ranks, buffer, bounds, what
        self.final = [False] * len(bounds)
        self.issued = []

    def ready(self, k: int) -> None:
        self.final[k] = True
        while len(self.issued) < len(self.bounds) and self.final[len(self.issued)]:
            a, b = self.bounds[len(self.issued)]
            self.issued.append(self.ranks.submit(self.ranks.sum_in_place, self.buffer[a:b]))

    async def wait(self) -> None:
        for k in range(len(self.bounds)):
            if not self.final[k]:
                self.ready(k)
        await self.ranks.settle(self.issued, self.what)
