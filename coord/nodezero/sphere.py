"""The sphere hierarchy: leaves are workers, every parent has at most 12 children.

With up to 12 workers they hang from Node Zero directly; past that a level of
symmetry groups appears (1 + 12 + 144 = 157 spheres for 144 workers, the original
configuration), and another for every further factor of 12.
"""

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from cllm.protocol.mailbox import Mailbox

from .states import SPHERE_TRANSITIONS, SphereState, StateMachine

FANOUT = 12
INBOX_CAPACITY = 1024


class Inbox:
    """A sphere's bounded four-priority mailbox with asyncio wake-ups (event loop thread only).

    Nothing that must arrive is dropped: a sender that may wait (a sphere answering up the tree)
    awaits ``deliver``, which holds it until the receiver has taken messages and made room; a sender
    that may not (Node Zero between its own awaits) calls ``put`` and acts on a refusal.
    """

    def __init__(self, capacity: int = INBOX_CAPACITY):
        self.mailbox = Mailbox(capacity)
        self.ready = asyncio.Event()
        self.room = asyncio.Event()

    def put(self, message) -> bool:
        """Queue ``message``; False, with nothing queued, when the mailbox has no room at its level."""
        accepted = self.mailbox.put(message)
        if accepted:
            self.ready.set()
        return accepted

    async def deliver(self, message, timeout: float) -> None:
        """Queue ``message``, waiting while the mailbox is full; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not self.put(message):
                self.room.clear()
                await self.room.wait()

    async def get(self, timeout: float):
        """The highest-priority message; TimeoutError after ``timeout`` seconds with none."""
        async with asyncio.timeout(timeout):
            while True:
                message = self.take()
                if message is not None:
                    return message
                self.ready.clear()
                await self.ready.wait()

    def take(self):
        """The highest-priority message waiting, or None."""
        message = self.mailbox.get()
        if message is not None:
            self.room.set()
        return message

    def drop(self, kinds: set) -> int:
        """Remove every waiting message of the given types (stale answers of a failed step)."""
        dropped = self.mailbox.discard(lambda message: message.type in kinds)
        if dropped:
            self.room.set()
        return dropped

    def __len__(self) -> int:
        return len(self.mailbox)


@dataclass
class SphereStats:
    batches: int = 0
    tokens: int = 0
    busy_s: float = 0.0
    waiting_s: float = 0.0


@dataclass(eq=False)
class Sphere:
    id: int
    level: int
    parent: "Sphere | None"
    children: list = field(default_factory=list)
    worker_index: int = -1  # position among the leaves, -1 for inner spheres
    stats: SphereStats = field(default_factory=SphereStats)

    def __post_init__(self):
        self.machine = StateMachine(SphereState.INITIALIZING, SPHERE_TRANSITIONS, f"sphere {self.id}")
        self.inbox = Inbox()
        self.group = -1  # the parent's id, from SIBLING_DISCOVER
        self.siblings = []
        self.epoch = 0  # from EPOCH_START
        self.notices = Counter()  # boundary and epoch notices seen, by message type

    @property
    def state(self) -> SphereState:
        return self.machine.state

    @property
    def is_worker(self) -> bool:
        return not self.children and self.level > 0

    def leaves(self) -> list:
        if self.is_worker:
            return [self]
        return [leaf for child in self.children for leaf in child.leaves()]

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


def group_sizes(n: int, parts: int) -> list:
    """``n`` items over ``parts`` groups as evenly as possible, larger groups first."""
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def build_tree(n_workers: int) -> Sphere:
    """Node Zero (id 0) over ``n_workers`` leaves, each parent with at most FANOUT children.

    Ids are given breadth first; leaves are numbered 0.. in order as workers.
    """
    if n_workers < 1:
        raise ValueError("a sphere tree needs at least one worker")
    depth = 1
    while FANOUT ** depth < n_workers:
        depth += 1
    root = Sphere(id=0, level=0, parent=None)

    def grow(parent: Sphere, n: int, levels_left: int) -> None:
        if levels_left == 1:
            parent.children = [Sphere(id=-1, level=parent.level + 1, parent=parent) for _ in range(n)]
            return
        per_child = FANOUT ** (levels_left - 1)
        parts = -(-n // per_child)
        for size in group_sizes(n, parts):
            child = Sphere(id=-1, level=parent.level + 1, parent=parent)
            parent.children.append(child)
            grow(child, size, levels_left - 1)

    grow(root, n_workers, depth)
    queue, next_id = [root], 0
    while queue:
        sphere = queue.pop(0)
        sphere.id = next_id
        sphere.machine.owner = f"sphere {next_id}"
        next_id += 1
        queue.extend(sphere.children)
    for index, leaf in enumerate(root.leaves()):
        leaf.worker_index = index
    return root
