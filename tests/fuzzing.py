"""What the property-based fuzzing tests share: settings, hostile JSON values, and ways to damage input.

Examples are drawn from small pools and edited, rather than built by deep recursive strategies, so
a few thousand of them cost seconds: the suite's time budget is part of the design.
"""

import json
import math
import os

from hypothesis import HealthCheck, settings, strategies as st

FUZZ = settings(max_examples=3000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

VALUES = [None, True, False, 0, 1, -1, 7, 1024, 1025, 2**31, 2**63, 10**400, 0.5, -0.0, 1e308, -1e-300, math.inf,
          math.nan, "", "x", "\x00", "\udcff", "é🚀", "NORMAL", "BATCH_START", "float32", "workers", "job-1", "text",
          "../../etc/shadow", "/etc/shadow", "x" * 300, [], [1], [True, None], ["a", "b"], [[[[]]]], {}, {"a": 1},
          {"text": "t"}, {"name": "g", "offset": 0, "length": 1, "dtype": "float32"}, {"": {"": {"": []}}},
          json.loads("[" * 400 + "]" * 400)]
values = st.sampled_from(VALUES) | st.integers() | st.floats() | st.text(max_size=6) \
    | st.lists(st.sampled_from(VALUES), max_size=3) | st.dictionaries(st.text(max_size=4), st.sampled_from(VALUES),
                                                                        max_size=2)
deep_text = st.integers(1, 5000).map(lambda n: "[" * n + "]" * n)  # JSON nested beyond the parser's recursion limit
edits = st.lists(st.tuples(st.integers(0, 100_000), st.binary(max_size=4)), min_size=1, max_size=4)


def damaged(data: bytes, changes: list) -> bytes:
    """``data`` with each (position, bytes) change written over it (positions wrap around)."""
    data = bytearray(data)
    for at, piece in changes:
        at %= len(data) + 1
        data[at:at + len(piece)] = piece
    return bytes(data)


def replaced(obj, path: list, value):
    """``obj`` with the item that ``path`` leads to (indices taken modulo each level's size) set to ``value``;
    a path that ends in an object adds ``value`` under a new key."""
    target = obj
    for choice in path:
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys:
            break
        key = keys[choice % len(keys)]
        if not isinstance(target[key], (dict, list)) or choice % 3 == 0:
            target[key] = value
            return obj
        target = target[key]
    if isinstance(target, dict):
        target[f"k{len(target)}"] = value
    return obj


def dumps(value) -> bytes:
    """``value`` as one JSON line; non-finite floats as Python's json writes them (NaN, Infinity)."""
    return json.dumps(value).encode()


def rewrite(path, data: bytes) -> None:
    """Put ``data`` in ``path`` without first truncating it to nothing: freeing and reallocating the blocks of
    one file thousands of times costs more than the example itself on a filesystem mounted with discard."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
