"""The daemon's job queue: training runs, persisted in the state directory so they survive a restart.

A job is an id, a status and the overrides of the service's configuration it was submitted with
(tables ``data``, ``model``, ``training``). Statuses: queued, running, paused (stopped by an
operational error such as a full disk, with the reason in ``detail``; it runs again after a
restart or ``cllm ctl resume``), done, failed, cancelled. ``jobs.json`` is rewritten atomically
on every change; a file that cannot be read whole is moved aside (logged) and the queue starts
again from the configuration's own job, so a damaged file never keeps the daemon down.
"""

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog

from ..files import write_atomically
from ..logs import iso_time

log = structlog.get_logger("cllm.jobs")

STATUSES = ("queued", "running", "paused", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
MAIN_JOB = "main"  # the run the configuration file describes
JOB_ID = re.compile(r"^(main|job-[1-9][0-9]{0,8})$")  # ids name directories: nothing else gets in


@dataclass
class Job:
    id: str
    status: str = "queued"
    overrides: dict = field(default_factory=dict)
    submitted: float = field(default_factory=time.time)
    detail: str = ""


def job_of(raw) -> Job:
    """A job from its JSON record; ValueError naming what is wrong."""
    if not isinstance(raw, dict) or set(raw) - {f for f in Job.__dataclass_fields__}:
        raise ValueError("a job is an object with id, status, overrides, submitted, detail")
    job = Job(**raw)
    if not isinstance(job.id, str) or not JOB_ID.match(job.id):
        raise ValueError(f"job id {job.id!r} is not main or job-N")
    if job.status not in STATUSES:
        raise ValueError(f"job {job.id}: status {job.status!r} is not one of {', '.join(STATUSES)}")
    if not isinstance(job.overrides, dict) or not isinstance(job.detail, str) \
            or type(job.submitted) not in (int, float):
        raise ValueError(f"job {job.id}: overrides must be a table, detail a string, submitted a time")
    return job


class JobStore:
    def __init__(self, state_dir: Path):
        self.file = Path(state_dir) / "jobs.json"
        self.jobs = []
        if self.file.exists():
            self.jobs = self.read()
        if not self.jobs:
            self.jobs = [Job(MAIN_JOB)]
            self.save()

    def read(self) -> list:
        try:
            raw = json.loads(self.file.read_text())
            if not isinstance(raw, list):
                raise ValueError("not a list of jobs")
            jobs = [job_of(item) for item in raw]
            if len({job.id for job in jobs}) != len(jobs):
                raise ValueError("a job id appears twice")
            return jobs
        except (ValueError, RecursionError, TypeError) as error:  # a UnicodeDecodeError is a ValueError
            aside = self.file.with_name(f"jobs.json.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            self.file.rename(aside)
            log.error("jobs_file_damaged", path=str(self.file), error=str(error) or type(error).__name__,
                      moved_to=str(aside), action="the queue starts again from the main job")
            return []

    def save(self) -> None:
        """Write the queue; if the state directory cannot take it, the queue lives on in memory (logged)
        and the next change tries again."""
        try:
            write_atomically(self.file, json.dumps([asdict(job) for job in self.jobs], indent=2))
        except OSError as error:
            log.error("jobs_file_not_saved", path=str(self.file), error=str(error))

    def get(self, job_id: str) -> Job | None:
        return next((job for job in self.jobs if job.id == job_id), None)

    def next(self) -> Job | None:
        """The job to run now: one that was running when the daemon stopped, else the oldest queued."""
        running = [job for job in self.jobs if job.status == "running"]
        queued = [job for job in self.jobs if job.status == "queued"]
        return (running or queued or [None])[0]

    def paused(self) -> list:
        return [job for job in self.jobs if job.status == "paused"]

    def unpause(self) -> list:
        """Paused jobs run again (at start, and on 'cllm ctl resume' with no run in progress)."""
        jobs = self.paused()
        for job in jobs:
            job.status, job.detail = "running", ""
        if jobs:
            self.save()
        return jobs

    def submit(self, overrides: dict) -> Job:
        number = 1 + max((int(job.id[4:]) for job in self.jobs if job.id.startswith("job-")), default=0)
        job = Job(f"job-{number}", overrides=overrides)
        self.jobs.append(job)
        self.save()
        return job

    def set(self, job: Job, status: str, detail: str = "") -> None:
        job.status, job.detail = status, detail
        self.save()

    def listing(self) -> list:
        """The queue as the control socket tells it, times in ISO 8601."""
        return [{**asdict(job), "submitted": iso_time(job.submitted)} for job in self.jobs]
