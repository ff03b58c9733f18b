"""The explicit state machines of spheres and of Node Zero."""

import time

from enum import Enum


class IllegalTransition(RuntimeError):
    pass


class SphereState(Enum):
    INITIALIZING = "initializing"
    READY = "ready"  # holds the weights of the last step
    IDLE = "idle"  # a worker that has asked for work and has none in hand
    PROCESSING = "processing"  # a worker running a micro-batch's kernels
    WAITING = "waiting"  # a group or Node Zero during a round, waiting on gradients
    ACCUMULATING = "accumulating"  # summing gradient ranges
    UPDATING = "updating"  # Node Zero applying the optimizer step
    TERMINATING = "terminating"
    TERMINATED = "terminated"


class ControlState(Enum):
    INITIALIZING = "initializing"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"


S = SphereState
SPHERE_TRANSITIONS = {
    S.INITIALIZING: {S.READY, S.TERMINATING},
    S.READY: {S.IDLE, S.WAITING, S.TERMINATING},
    S.IDLE: {S.PROCESSING, S.READY, S.TERMINATING},
    S.PROCESSING: {S.IDLE, S.READY},
    S.WAITING: {S.ACCUMULATING, S.UPDATING, S.READY, S.TERMINATING},
    S.ACCUMULATING: {S.WAITING, S.UPDATING, S.READY},
    S.UPDATING: {S.READY},
    S.TERMINATING: {S.TERMINATED},
    S.TERMINATED: set(),
}

C = ControlState
CONTROL_TRANSITIONS = {
    C.INITIALIZING: {C.RUNNING, C.STOPPING},
    C.RUNNING: {C.PAUSED, C.STOPPING},
    C.PAUSED: {C.RUNNING, C.STOPPING},
    C.STOPPING: {C.STOPPED},
    C.STOPPED: set(),
}


class StateMachine:
    """A current state and the table of legal moves; an illegal move raises."""

    def __init__(self, initial: Enum, transitions: dict, owner: str):
        self.state = initial
        self.transitions = transitions
        self.owner = owner
        self.since = time.monotonic()  # when the current state was entered

    def to(self, new: Enum) -> None:
        if new is self.state:
            return
        if new not in self.transitions[self.state]:
            raise IllegalTransition(f"{self.owner}: {self.state.name} -> {new.name} is not a legal transition")
        self.state = new
        self.since = time.monotonic()
