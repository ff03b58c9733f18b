"""Node Zero, the spheres it coordinates and their state machines."""

MAX_WORKERS = 1024  # worker spheres of one process: 1 + 12 + 144 + 1024 spheres at most, four levels
