"""Node Zero, the sphere tree, training, data, checkpoints, the CLI and the service."""
