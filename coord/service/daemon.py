"""`cllm serve`: the training daemon.

One event loop holds Node Zero, the control socket, signals and systemd's notifications.
The daemon runs the jobs of its queue one after another (the configuration's own run is
the job ``main``), each in ``<state_dir>/jobs/<id>/``, resuming from its latest checkpoint
after a restart. SIGTERM or SIGINT finishes the step in flight, writes a checkpoint and
exits 0; a second one exits at once. SIGHUP, like ``cllm ctl reload``, re-reads the
configuration and applies what can change while running: the log level at once, the
evaluation and checkpoint intervals at the next step boundary (on every rank under mpiexec,
whose launcher does not pass SIGHUP on: there ``cllm ctl reload`` is the way). SIGUSR1 and
SIGUSR2 are ignored (logged).

The daemon keeps running through operational errors. A checkpoint that cannot be written is
logged and tried again at the next interval; a job that cannot go on for such a reason (a
full disk, a run directory it cannot write) is paused with the reason, which ``cllm ctl
status`` shows, and runs again after a restart or ``cllm ctl resume`` once the cause is
fixed. Only a configuration it cannot start with makes it exit, with status 2 and one line:
a bad file, a state directory it cannot lock and write, another daemon on the same state
directory or socket.
"""

import asyncio
import dataclasses
import os
import signal
import time
from pathlib import Path

import structlog

from cllm.protocol import payloads as pl
from cllm.protocol.messages import MessageType as M, Priority

from ..checkpoints.store import list_checkpoints, load_checkpoint, load_training_state
from .control import ControlServer
from ..errors import OperationalError, RunFailed, UserError
from ..files import Locked, Scratch, hold_lock, scratch_name
from ..nodezero import MAX_WORKERS
from .health import HealthMonitor
from ..signals import StopSignals, stop_grace
from ..training.hooks import Hook
from .jobs import JobStore
from ..logs import configure, iso_time
from .notify import Notifier, WatchdogGate
from ..training.config import with_values
from ..training.run import open_run
from .config import load_config, merge_job, reload_changes
from .follower import STOP, idle_offer, job_offer, offer, open_on_every_rank

log = structlog.get_logger("cllm.service")

UMASK = 0o027  # deploy/cllm.service's UMask=: nothing the daemon writes is wider, however it is started


class Service:
    def __init__(self, config_path: Path):
        self.config_path = Path(config_path)
        self.config = load_config(self.config_path)
        self.jobs = None
        self.trainer = None
        self.job = None
        self.stopping = False
        self.wake = asyncio.Event()
        self.notifier = Notifier.from_environ()
        self.watchdog = WatchdogGate(self.notifier, (self.notifier.watchdog_interval or 10.0) / 2)
        self.metrics = None
        self.ready_sent = False
        self.last_status = {}
        self.workers = None  # a worker count asked for while no run was in progress
        self.state_lock = None  # the descriptor holding <state_dir>/daemon.lock
        self.ranks = None  # under mpiexec, rank 0's Ranks: the other ranks are Followers (service/follower.py)
        self.reloading = None  # the task of a reload asked by SIGHUP

    # ----- lifecycle -----

    async def run(self) -> int:
        c = self.config
        configure(c.logging.format, c.logging.level, rank=self.rank)
        os.umask(os.umask(UMASK) | UMASK)
        self.state_lock = claim_state_dir(c.service.state_dir)
        self.jobs = JobStore(c.service.state_dir)
        self.jobs.unpause()  # a restart is the operator's sign that the cause is fixed
        control = ControlServer(c.service.socket, self.handle, c.service.socket_group,
                                answer_timeout=c.run.step_timeout + 60)
        await control.start()
        if c.metrics.enabled:
            from .metrics import Metrics
            self.metrics = Metrics(c.metrics.address, c.metrics.port)
            self.metrics.start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.on_reload)
        log.info("service_started", config=str(self.config_path), state_dir=str(c.service.state_dir),
                 socket=str(c.service.socket), pid=os.getpid())
        try:
            with StopSignals(self.stop, stop_grace(c.run.step_timeout)):
                while not self.stopping:
                    job = self.jobs.next()
                    if job is None:
                        await self.idle()
                        continue
                    await self.run_job(job)
        finally:
            if self.ranks is not None:
                await offer(self.ranks, STOP)
            self.notifier.stopping()
            await control.close()
            if self.metrics is not None:
                self.metrics.stop()
            log.info("service_stopped")
        return 0

    async def idle(self) -> None:
        """No job to run: stay up for the control socket until a job is submitted or a stop."""
        self.set_ready("idle: no queued job")
        self.wake.clear()
        while not self.stopping and self.jobs.next() is None:
            self.follow_metrics()
            try:
                await asyncio.wait_for(self.wake.wait(), 1.0)
            except TimeoutError:
                pass
            self.watchdog.progress()  # nothing to train is not a stuck training
            if self.ranks is not None:
                await offer(self.ranks, idle_offer(self.config.logging.level))

    async def run_job(self, job) -> None:
        c = self.config
        run_dir = c.service.state_dir / "jobs" / job.id
        try:
            run = merge_job(c, job.overrides).run
            run = with_values(run, {"checkpoint_dir": run_dir, "threads": self.workers or run.threads})
            found = list_checkpoints(run_dir)
            resumed = load_checkpoint(run_dir) if found else None  # the newest that loads
            saved = load_training_state(resumed.path) if resumed else None
            if saved and saved.step >= run.steps:
                self.jobs.set(job, "done", f"finished at step {saved.step}")
                return
            self.trainer = await self.open_job(run, resumed, saved)
        except UserError as error:
            log.error("job_refused", job=job.id, error=str(error))
            self.jobs.set(job, "failed", str(error))
            return
        except OperationalError as error:
            self.pause_job(job, error)
            return
        self.job = job
        self.jobs.set(job, "running")
        self.last_status = {}
        self.attach(self.trainer)
        self.follow_metrics()
        log.info("job_started", job=job.id, run_dir=str(run_dir), step=self.trainer.state.step)
        monitor = asyncio.create_task(self.health.watch())
        try:
            summary = await self.trainer.run()
        except RunFailed as error:
            log.error("job_failed", job=job.id, error=str(error))
            self.jobs.set(job, "failed", str(error))
        except OperationalError as error:
            self.pause_job(job, error)
        else:
            if job.status == "cancelled" or self.trainer.stop_reason == "cancel":
                self.jobs.set(job, "cancelled", f"at step {summary['step']}")
            elif self.trainer.stop_reason in ("SIGTERM", "SIGINT", "stop", "memory"):
                self.jobs.set(job, "running")  # interrupted: resumes on the next start
            else:
                self.jobs.set(job, "done", f"val_loss {summary['val_loss']:.4f} at step {summary['step']}")
            log.info("job_ended", job=job.id, status=job.status, step=summary["step"])
        finally:
            monitor.cancel()
            self.trainer, self.job = None, None
            self.follow_metrics()
            try:
                await monitor  # done before the job is: a monitor that failed raises here instead of being lost
            except asyncio.CancelledError:
                pass

    async def open_job(self, run, resumed, saved):
        """The job's Trainer; under mpiexec, offered to the other ranks and opened on every rank."""
        if self.ranks is None:
            return open_run(run, resumed, saved)
        offered = job_offer(run, resumed, saved, self.config.logging.level)
        await offer(self.ranks, offered)
        return open_on_every_rank(self.ranks, offered)

    @property
    def rank(self) -> int | None:
        return None if self.ranks is None else self.ranks.rank

    def pause_job(self, job, error: OperationalError) -> None:
        log.error("job_paused", job=job.id, error=str(error), action="fix the cause, then 'cllm ctl resume' or restart")
        self.jobs.set(job, "paused", str(error))
        self.follow_metrics()

    def follow_metrics(self) -> None:
        """Metrics of what `cllm ctl status` and `jobs` tell: step, epoch, paused, the job, the queue."""
        if self.metrics is not None:
            self.metrics.follow(self.status(), self.jobs.listing())

    def attach(self, trainer) -> None:
        """Hooks that report a run's progress to systemd, metrics and the health monitor."""
        def paused():
            self.watchdog.progress()  # paused on purpose is not stuck
            self.follow_metrics()

        trainer.on_idle = paused
        health = HealthMonitor(trainer.node, self.config.service.stall_timeout, self.config.service.memory_limit_mb,
                               on_memory=lambda: trainer.request_stop("memory"))
        self.health = health

        def step_done(info):
            self.watchdog.progress()
            health.loss(info["step"], info["loss"])
            self.last_status.update(step=info["step"], loss=info["loss"], tokens_per_s=info["tokens"] / info["seconds"])
            self.notifier.status(f"step {info['step']} loss {info['loss']:.4f} "
                                 f"{self.last_status['tokens_per_s']:.0f} tok/s")
            if self.metrics is not None:
                self.metrics.observe_step(info["loss"], info["tokens"], info["seconds"])
                self.metrics.set_workers(trainer.node.n_workers)
                if trainer.last_val_loss is not None:
                    self.metrics.observe_eval(trainer.last_val_loss, trainer.last_val_accuracy)
                self.follow_metrics()

        def batch_start(info):
            self.last_status["epoch"] = info["epoch"]
            self.set_ready(f"training {self.job.id if self.job else ''} from step {info['step']}")

        trainer.hooks.on(Hook.BATCH_END, step_done)
        trainer.hooks.on(Hook.BATCH_START, batch_start)
        if self.metrics is not None:
            trainer.hooks.on(Hook.CHECKPOINT, lambda info: self.metrics.checkpoint_saved())

    def set_ready(self, status: str) -> None:
        if not self.ready_sent:
            self.notifier.send("READY=1", f"STATUS={status}")
            self.ready_sent = True
            log.info("service_ready", status=status)

    # ----- stopping and reloading -----

    def stop(self, reason: str) -> None:
        self.stopping = True
        self.notifier.stopping()
        if self.trainer is not None:
            self.trainer.request_stop(reason)
        self.wake.set()

    def on_reload(self) -> None:
        """SIGHUP: the reload ``cllm ctl reload`` asks for, on a task (it waits for the step boundary)."""
        self.reloading = asyncio.create_task(self.reload_quietly())

    async def reload_quietly(self) -> None:
        try:
            await self.reload()
        except UserError:
            pass  # logged: no one waits for an answer

    async def reload(self) -> dict:
        """Re-read the configuration; the log level applies at once, the evaluation and checkpoint intervals
        at the run's next step boundary, on every rank (and to the jobs after it). What changed, what needs
        a restart, and the step at which the run took the intervals (None without a run)."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except UserError as error:
            log.error("config_reload_failed", error=str(error))
            self.notifier.reloaded()
            raise
        changed, restart = reload_changes(self.config, new)
        if "logging.level" in changed:
            configure(self.config.logging.format, new.logging.level, rank=self.rank)
        intervals = {"eval_interval": new.run.eval.interval, "checkpoint_interval": new.run.checkpoints.interval}
        self.config = dataclasses.replace(self.config, logging=new.logging, run=with_values(self.config.run, intervals))
        step = None
        if self.trainer is not None:
            try:
                step = (await self.trainer.reload({"level": new.logging.level, **intervals}))["step"]
            except RuntimeError:  # the run ended first: the next one starts with the new settings
                pass
        changed = {key: list(values) for key, values in changed.items()}
        log.info("config_reloaded", changed=changed, needs_restart=restart, step=step)
        self.notifier.reloaded()
        return {"changed": changed, "needs_restart": restart, "step": step}

    # ----- control requests -----

    async def handle(self, request):
        command, args, t = request.command, request.args, self.trainer
        if command == "status":
            return self.status()
        if command == "jobs":
            return self.jobs.listing()
        if command == "submit":
            merge_job(self.config, args["job"])  # refuses a bad job before it is queued
            job = self.jobs.submit(args["job"])
            self.wake.set()
            log.info("job_submitted", job=job.id)
            return {"id": job.id, "status": job.status}
        if command == "cancel":
            job = self.jobs.get(args["id"])
            if job is None:
                raise UserError(f"no job {args['id']!r}; 'cllm ctl jobs' lists them")
            if job.status in ("done", "failed", "cancelled"):
                raise UserError(f"job {job.id} is already {job.status}")
            if job is self.job and t is not None:
                t.request_stop("cancel")
            self.jobs.set(job, "cancelled")
            return {"id": job.id, "status": "cancelled"}
        if command == "stop":
            self.stop("stop")
            return {"stopping": True}
        if command == "reload":
            return await self.reload()
        if command == "workers" and args["count"] > MAX_WORKERS:
            raise UserError(f"{args['count']} workers is more than the {MAX_WORKERS} a run may have")
        if command == "workers" and t is None:
            self.workers = args["count"]
            return {"workers": args["count"], "applies": "to the next run"}
        if command == "resume" and t is None and self.jobs.paused():
            resumed = [job.id for job in self.jobs.unpause()]
            self.wake.set()
            log.info("jobs_resumed", jobs=resumed)
            return {"resumed": resumed}
        if t is None:
            raise UserError(f"no run is in progress; '{command}' needs one")
        if command == "pause":
            return await t.pause()
        if command == "resume":
            t.resume()
            return {"resumed": True}
        if command == "checkpoint":
            return await t.ask(M.TWIN_PRIME_HIT, pl.IntervalHit(step=t.state.step, kind="checkpoint"), Priority.HIGH)
        if command == "workers":
            kind = M.CHILD_SPAWN if args["count"] > t.node.n_workers else M.CHILD_TERMINATE
            return await t.ask(kind, pl.ChildCount(count=args["count"]))
        if command == "stats":
            return await t.ask(M.STATS_REQUEST, pl.StatsRequest())
        raise UserError(f"unknown command {command!r}")

    def status(self) -> dict:
        t = self.trainer
        status = {"pid": os.getpid(), "state": "stopping" if self.stopping else "idle" if t is None else
                  t.node.control.state.name.lower(), "job": self.job.id if self.job else None,
                  "time": iso_time(time.time())}
        paused = self.jobs.paused()
        if t is None and paused:  # why nothing trains
            status.update(state="paused", job=paused[0].id, reason=paused[0].detail)
        if self.ranks is not None:
            status["ranks"] = self.ranks.size
        if t is not None:
            status.update(self.last_status)
            status.update(step=t.state.step, steps=t.config.steps, workers=t.node.n_workers,
                          best_val_loss=t.state.best_val if t.state.best_step else None)
        return status


def claim_state_dir(state_dir: Path) -> int:
    """Lock the state directory for this daemon and prove it can be written; the descriptor holds the lock.
    UserError (exit 2, one line) when another daemon holds it or the directory cannot be used."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        lock = hold_lock(state_dir / "daemon.lock")
    except Locked as error:
        raise UserError(f"another daemon (pid {error.holder}) uses the state directory {state_dir}; stop it, or "
                        "give this one another [service] state_dir") from None
    except OSError as error:
        raise UserError(f"cannot use the state directory {state_dir} ({error.strerror}); give a directory the "
                        "service can create and write ([service] state_dir)") from None
    try:
        Scratch(state_dir / scratch_name(".probe.tmp-")).remove()
    except OSError as error:
        os.close(lock)
        raise UserError(f"cannot write in the state directory {state_dir} ({error.strerror}); fix its permissions "
                        "or attributes, or give another [service] state_dir") from None
    return lock
