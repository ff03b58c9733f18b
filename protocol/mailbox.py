"""A bounded four-level priority mailbox: highest priority first, FIFO within a level.

It never blocks and takes no locks: one asyncio event loop owns it, and the
coord layer adds the wake-ups. When it is full ``put`` returns False and the
sender decides (retry, drop a LOW report, or fail the step); the mailbox never
drops a message it has accepted.

The last ``critical_reserve`` places are kept for CRITICAL messages, so a
shutdown or an error report still gets in when lower-priority traffic has
filled the rest: a LOW, NORMAL or HIGH message is accepted while fewer than
``capacity - critical_reserve`` messages wait, a CRITICAL one while fewer than
``capacity`` wait.
"""

from collections import deque

from .messages import Message, Priority

LEVELS = sorted(Priority, reverse=True)  # CRITICAL first


class Mailbox:
    def __init__(self, capacity: int = 1024, critical_reserve: int = 16):
        if not 0 < critical_reserve < capacity:
            raise ValueError(f"need 0 < critical_reserve < capacity, got {critical_reserve} and {capacity}")
        self.capacity = capacity
        self.critical_reserve = critical_reserve
        self._queues = {level: deque() for level in LEVELS}
        self._size = 0

    def put(self, message: Message) -> bool:
        """Queue ``message``; False, with nothing queued, when its level has no room left."""
        limit = self.capacity if message.priority == Priority.CRITICAL else self.capacity - self.critical_reserve
        if self._size >= limit:
            return False
        self._queues[message.priority].append(message)
        self._size += 1
        return True

    def get(self) -> Message | None:
        """The oldest message of the highest non-empty level, or None when empty."""
        if self._size:
            for level in LEVELS:
                queue = self._queues[level]
                if queue:
                    self._size -= 1
                    return queue.popleft()
        return None

    def discard(self, unwanted) -> int:
        """Remove every waiting message for which ``unwanted(message)`` is true; returns how many."""
        removed = 0
        for level, queue in self._queues.items():
            kept = deque(m for m in queue if not unwanted(m))
            removed += len(queue) - len(kept)
            self._queues[level] = kept
        self._size -= removed
        return removed

    def __len__(self) -> int:
        return self._size

    def counts(self) -> dict[Priority, int]:
        """Messages waiting at each level, LOW to CRITICAL."""
        return {level: len(self._queues[level]) for level in Priority}
