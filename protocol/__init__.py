"""Message types, priorities and the wire encoding: no asyncio, no numba."""

from .mailbox import Mailbox
from .messages import BROADCAST, NODE_ZERO, Category, Message, MessageType, Priority, make
from .payloads import BufferRef
from .wire import MAX_LINE_BYTES, WireError, decode, encode

__all__ = [
    "BROADCAST", "NODE_ZERO", "MAX_LINE_BYTES", "BufferRef", "Category", "Mailbox", "Message", "MessageType",
    "Priority", "WireError", "decode", "encode", "make",
]
