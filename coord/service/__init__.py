"""The training daemon: configuration, control socket, jobs, health, metrics, systemd."""
