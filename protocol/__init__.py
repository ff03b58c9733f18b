"""Message types, priorities and the wire encoding: no asyncio, no numba."""
