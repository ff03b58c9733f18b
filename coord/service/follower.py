"""`cllm serve` under mpiexec: rank 0 is the daemon, every other rank a Follower training what rank 0 offers.

Rank 0 alone holds the control socket, systemd's notifications, the job queue and the state
directory. The other ranks wait for its word, broadcast from rank 0: a job to train (its
settings, and the checkpoint rank 0 resumes it from), an idle word about once a second while
there is none, or ``STOP``; every word but STOP carries rank 0's log level, which the other
ranks follow. While a job trains, the operator's requests to rank 0 (pause, resume,
checkpoint, stats, workers, stop, reload) reach every rank through the run's agreed step
boundary decisions, so they take effect on every rank at the same boundary.
"""

import asyncio
import signal

import structlog

from ..errors import OperationalError, RunFailed, UserError
from ..logs import configure
from ..signals import StopSignals, stop_grace
from ..training.run import open_run

log = structlog.get_logger("cllm.service")

STOP = "stop"


async def offer(ranks, word) -> object:
    """Rank 0's ``word`` (a job, an idle word or STOP) on every rank."""
    return await ranks.run("rank 0's next job", ranks.comm.bcast, word, 0)


def idle_offer(level: str) -> dict:
    return {"level": level}


def job_offer(run, resumed, saved, level: str) -> dict:
    return {"run": run, "resumed": resumed, "saved": saved, "level": level}


def open_on_every_rank(ranks, offered: dict):
    """``open_run`` of an offered job on every rank; an error on any rank, at any point of the start, is
    raised on every rank (naming the rank), so that the ranks refuse (or pause) a job together and every
    daemon goes on serving."""
    trainer = None
    try:
        with ranks.together("the ranks' start of a job"):
            trainer = open_run(offered["run"], offered["resumed"], offered["saved"], ranks=ranks)
    except (UserError, OperationalError):
        if trainer is not None and trainer.run_directory is not None:
            trainer.run_directory.release()
        raise
    return trainer


class Follower:
    """A rank other than 0 of the daemon."""

    def __init__(self, config, ranks):
        self.config, self.ranks = config, ranks
        self.trainer = None
        self.level = None

    async def run(self) -> int:
        c = self.config
        self.follow(c.logging.level)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.hangup)
        with StopSignals(self.stop, stop_grace(c.run.step_timeout)):
            while (word := await offer(self.ranks, None)) != STOP:
                self.follow(word["level"])
                if "run" in word:
                    await self.train(word)
        return 0

    def follow(self, level: str) -> None:
        """Log at rank 0's level (its configuration's, or a reload's)."""
        if level != self.level:
            configure(self.config.logging.format, level, rank=self.ranks.rank)
            self.level = level

    def hangup(self) -> None:
        log.warning("reload_ignored", reason="rank 0 reloads every rank: send it SIGHUP, or run 'cllm ctl reload'")

    async def train(self, offered: dict) -> None:
        try:
            self.trainer = open_on_every_rank(self.ranks, offered)
        except (UserError, OperationalError):
            return  # rank 0 refuses or pauses the job, and says why
        self.trainer.on_reload = lambda settings: self.follow(settings["level"])
        try:
            await self.trainer.run()
        except (RunFailed, OperationalError):
            pass  # rank 0 met the same end of the run, and records it
        finally:
            self.trainer = None

    def stop(self, reason: str) -> None:
        """A signal: the run in progress stops at the next boundary (with rank 0's agreement); rank 0, which
        mpiexec gave the same signal, then says STOP."""
        if self.trainer is not None:
            self.trainer.request_stop(reason)
