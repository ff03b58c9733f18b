"""`cllm serve`: the training daemon."""

from pathlib import Path


def add_parser(commands) -> None:
    p = commands.add_parser("serve", help="run the training daemon (systemd service)")
    p.add_argument("--config", type=Path, required=True, help="the TOML configuration (see deploy/cllm.toml)")
    p.set_defaults(run=run)


def run(args) -> int:
    """The daemon, alone or under mpiexec: rank 0 is the daemon, every other rank a Follower of it."""
    from ..distributed.ranks import join
    from ..logs import configure
    from ..service.daemon import Service
    from ..service.follower import Follower
    from ..training.trainer import run_event_loop
    from .main import as_rank

    service = Service(args.config)  # refuses a bad configuration before anything starts, on every rank
    ranks = join(service.config.run.step_timeout)
    if ranks is None:
        return run_event_loop(service.run())
    configure(service.config.logging.format, service.config.logging.level, rank=ranks.rank)
    if ranks.is_root:
        service.ranks = ranks
        return as_rank(ranks, lambda: run_event_loop(service.run()))
    return as_rank(ranks, lambda: run_event_loop(Follower(service.config, ranks).run()))
