"""Heartbeats between ranks, so that a collective that times out can name the rank at fault.

Every ``interval`` seconds a thread of each rank sends every other rank two numbers, the
sequence numbers of the last collective its communication thread entered and completed, on a
communicator of its own (a few bytes; N·(N-1) messages a second in all). Collectives are
numbered in the order they are issued, the same on every rank. When a collective of number
``seq`` times out, a peer that was not heard from for a while died or hangs, and a peer still
heard from whose last entered collective is below ``seq`` is alive but never reached it.
"""

import threading
import time

import numpy as np

BEAT = 11  # message tag on the watch's own communicator


class PeerWatch:
    def __init__(self, mpi, comm, interval: float, progress):
        """``progress()`` gives (entered, completed) collective numbers of this rank."""
        self.mpi, self.comm, self.interval, self.progress = mpi, comm, interval, progress
        self.peers = [r for r in range(comm.Get_size()) if r != comm.Get_rank()]
        now = time.monotonic()
        self.heard = {peer: (now, 0, 0) for peer in self.peers}  # peer -> (when, entered, completed)
        self.sending = []  # (request, buffer): a buffer must live until its send completes
        self.incoming = np.zeros(2, dtype=np.int64)
        self.status = mpi.Status()
        self.lock = threading.Lock()  # the heartbeat thread beats; a failing collective looks too

    def beat(self) -> None:
        """Send this rank's progress to every peer and take what has arrived; never blocks."""
        with self.lock:
            self.exchange()

    def exchange(self) -> None:
        entered, completed = self.progress()
        for peer in self.peers:
            buffer = np.array([entered, completed], dtype=np.int64)
            self.sending.append((self.comm.Isend(buffer, dest=peer, tag=BEAT), buffer))
        self.sending = [(request, buffer) for request, buffer in self.sending if not request.Test()]
        while self.comm.Iprobe(source=self.mpi.ANY_SOURCE, tag=BEAT, status=self.status):
            peer = self.status.Get_source()
            self.comm.Recv(self.incoming, source=peer, tag=BEAT)
            self.heard[peer] = (time.monotonic(), int(self.incoming[0]), int(self.incoming[1]))

    def suspects(self, seq: int) -> list:
        """(rank, why) for each peer that died, hangs or never reached collective ``seq``."""
        self.beat()
        now, silence = time.monotonic(), 3 * self.interval
        found = []
        for peer, (when, entered, completed) in sorted(self.heard.items()):
            quiet = now - when
            if quiet > silence:
                found.append((peer, f"rank {peer} has not been heard from for {quiet:.1f}s: it died or hangs"))
            elif entered < seq:
                found.append((peer, f"rank {peer} is alive but never reached it (it completed collective "
                                    f"{completed} of {seq})"))
        return found
