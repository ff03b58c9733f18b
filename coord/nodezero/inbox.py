"""A sphere's inbox: the bounded four-priority mailbox with asyncio wake-ups and back-pressure.

Nothing that must arrive is ever dropped: a sender finding the inbox full waits until the
receiver has taken something (``put``), under a timeout that fails the step instead of
freezing it. Only the event loop's thread touches an inbox.
"""

import asyncio

from cllm.protocol.mailbox import Mailbox

INBOX_CAPACITY = 1024


class Inbox:
    def __init__(self, capacity: int = INBOX_CAPACITY):
        self.mailbox = Mailbox(capacity)
        self.ready = asyncio.Event()  # set while messages wait
        self.room = asyncio.Event()  # set when a get has made room

    async def put(self, message, timeout: float = 600.0) -> None:
        """Queue ``message``, waiting while the inbox is full; TimeoutError after ``timeout`` seconds."""
        if not self.mailbox.put(message):
            async with asyncio.timeout(timeout):
                while not self.mailbox.put(message):
                    self.room.clear()
                    await self.room.wait()
        self.ready.set()

    async def get(self, timeout: float):
        """The highest-priority message; TimeoutError after ``timeout`` seconds with none."""
        async with asyncio.timeout(timeout):
            while True:
                message = self.mailbox.get()
                if message is not None:
                    self.room.set()
                    return message
                self.ready.clear()
                await self.ready.wait()

    def __len__(self) -> int:
        return len(self.mailbox)
