"""The daemon's job queue: training runs, persisted in the state directory so they survive a restart.

A job is an id, a status (queued, running, done, failed, cancelled) and the overrides of the
service's configuration it was submitted with (tables ``data``, ``model``, ``training``).
``jobs.json`` is rewritten atomically on every change.
"""

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError

STATUSES = ("queued", "running", "done", "failed", "cancelled")
MAIN_JOB = "main"  # the run the configuration file describes


@dataclass
class Job:
    id: str
    status: str = "queued"
    overrides: dict = field(default_factory=dict)
    submitted: float = field(default_factory=time.time)
    detail: str = ""


class JobStore:
    def __init__(self, state_dir: Path):
        self.file = Path(state_dir) / "jobs.json"
        self.jobs = []
        if self.file.exists():
            try:
                self.jobs = [Job(**raw) for raw in json.loads(self.file.read_text())]
            except (ValueError, TypeError) as error:
                raise UserError(f"{self.file} is damaged ({error}); move it aside to start with an empty queue") \
                    from None
        if not self.jobs:
            self.jobs = [Job(MAIN_JOB)]
            self.save()

    def save(self) -> None:
        staging = self.file.with_name(f".{self.file.name}.tmp-{os.getpid()}")
        with open(staging, "w") as f:
            json.dump([asdict(job) for job in self.jobs], f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, self.file)

    def get(self, job_id: str) -> Job | None:
        return next((job for job in self.jobs if job.id == job_id), None)

    def next(self) -> Job | None:
        """The job to run now: one that was running when the daemon stopped, else the oldest queued."""
        running = [job for job in self.jobs if job.status == "running"]
        queued = [job for job in self.jobs if job.status == "queued"]
        return (running or queued or [None])[0]

    def submit(self, overrides: dict) -> Job:
        number = 1 + sum(1 for job in self.jobs if job.id.startswith("job-"))
        job = Job(f"job-{number}", overrides=overrides)
        self.jobs.append(job)
        self.save()
        return job

    def set(self, job: Job, status: str, detail: str = "") -> None:
        job.status, job.detail = status, detail
        self.save()

    def listing(self) -> list:
        return [asdict(job) for job in self.jobs]
