"""The training loop, the run's configuration, optimizers, schedules and hooks."""
