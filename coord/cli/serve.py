"""`cllm serve`: the training daemon."""

from pathlib import Path


def add_parser(commands) -> None:
    p = commands.add_parser("serve", help="run the training daemon (systemd service)")
    p.add_argument("--config", type=Path, required=True, help="the TOML configuration (see deploy/cllm.toml)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..service.daemon import Service
    from ..training.trainer import run_event_loop

    service = Service(args.config)  # refuses a bad configuration before anything starts
    return run_event_loop(service.run())
