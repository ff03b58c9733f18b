"""Node Zero, the spheres it coordinates and their state machines."""
