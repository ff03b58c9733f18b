"""`cllm ctl` as an operator reads it: aligned status lines, the statistics tree, the jobs table; JSON with
--json; ISO 8601 times in both; the socket found where `cllm serve` puts it when neither names one."""

import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import pytest

from .daemon import Daemon, write_config

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """A daemon whose configuration names no socket, in a user's runtime directory."""
    directory = tmp_path_factory.mktemp("ctl")
    config = write_config(directory)
    config.write_text("\n".join('socket = ""' if line.startswith("socket") else line  # "": the default
                                for line in config.read_text().splitlines()))
    runtime = Path(tempfile.mkdtemp(dir="/tmp"))  # AF_UNIX paths must be short
    env = {k: v for k, v in os.environ.items() if k not in ("RUNTIME_DIRECTORY", "INVOCATION_ID")}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    daemon = Daemon(config, env=env)
    daemon.env, daemon.directory = env, directory
    try:
        daemon.wait_for(lambda e: e["event"] == "control_listening")
        daemon.wait_for_step(5)
        yield daemon
    finally:
        assert daemon.stop() == 0


def ctl(daemon, *args) -> str:
    result = subprocess.run([sys.executable, "-m", "cllm.coord", "ctl", *map(str, args)], capture_output=True,
                            text=True, env=daemon.env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_default_socket_is_in_the_user_s_runtime_directory(daemon):
    listening = daemon.wait_for(lambda e: e["event"] == "control_listening")
    assert listening["socket"] == str(Path(daemon.env["XDG_RUNTIME_DIR"]) / "cllm" / "control.sock")


def test_status_reads_as_aligned_lines_and_as_json(daemon):
    lines = ctl(daemon, "status").splitlines()
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in lines)
    assert fields["state"] == "running" and fields["job"] == "main"
    assert re.fullmatch(r"[\d,]+ of 100,000", fields["step"])
    assert ISO.fullmatch(fields["time"]) and fields["pid"] == f"{daemon.process.pid:,}"
    column = {len(line) - len(line[len(label):].lstrip()) for line, label in zip(lines, fields)}
    assert len(column) == 1  # every value starts in the same column

    status = json.loads(ctl(daemon, "status", "--json"))
    assert status["state"] == "running" and status["step"] >= 5 and status["steps"] == 100000
    assert ISO.fullmatch(status["time"])  # no epoch floats
    assert abs((datetime.fromisoformat(status["time"]) - datetime.now().astimezone()).total_seconds()) < 120


def test_stats_is_a_tree_of_groups_and_workers_with_busy_and_waiting_shares(daemon):
    assert "workers" in ctl(daemon, "workers", 14)  # past twelve: a level of symmetry groups appears
    stats = json.loads(ctl(daemon, "stats", "--json"))
    groups = stats["children"]
    assert [len(g["children"]) for g in groups] and sum(len(g["children"]) or 1 for g in groups) == 14

    lines = ctl(daemon, "stats").splitlines()
    assert lines[0].startswith("node zero ")
    # each group by its symmetry group number, 0-11 within Node Zero, then its sphere id; each worker by its id and
    # its number within its group
    shown = [tuple(map(int, m.groups())) for m in (re.match(r"^[├└]─ group (\d+) \(sphere (\d+)\) ", line)
                                                   for line in lines) if m]
    assert shown == [(g["group"], g["sphere"]) for g in groups if g["children"]] == [(0, 1), (1, 2)]
    workers = [line for line in lines if re.search(r"[├└]─ worker \d+ \(group \d+\) ", line)]
    assert len(workers) == 14
    assert [int(re.search(r"\(group (\d+)\)", line)[1]) for line in workers] == [*range(7), *range(7)]
    assert any(line.startswith(("│  ├─ worker", "│  └─ worker", "   └─ worker", "   ├─ worker")) for line in workers)
    for line in lines:
        shares = re.search(r"busy\s+([\d.]+)%\s+waiting\s+([\d.]+)%", line)
        if re.search(r"batches\s+0 ", line):  # a worker with no rows yet has no shares
            assert re.search(r"busy\s+-\s+waiting\s+-$", line), line
        else:
            assert shares and abs(float(shares[1]) + float(shares[2]) - 100.0) < 0.2, line
    first = re.search(r"batches\s+([\d,]+)\s+tokens\s+([\d,]+)", lines[0]).groups()
    assert int(first[1].replace(",", "")) >= stats["tokens"] > 0  # the tree read later has counted more


def test_jobs_is_a_table_with_iso_times(daemon):
    job = daemon.directory / "job.toml"
    job.write_text("[training]\nsteps = 30\nlearning_rate = 0.002\n")
    assert "job-1" in ctl(daemon, "submit", job)

    lines = ctl(daemon, "jobs").splitlines()
    assert lines[0].split() == ["ID", "STATUS", "SUBMITTED", "CHANGES", "DETAIL"]
    rows = {line.split()[0]: re.split(r"\s{2,}", line) for line in lines[1:]}
    assert rows["main"][1:] == ["running", rows["main"][2], "-", "-"]
    assert rows["job-1"][1:] == ["queued", rows["job-1"][2], "training.steps=30 training.learning_rate=0.002", "-"]
    assert ISO.fullmatch(rows["main"][2]) and ISO.fullmatch(rows["job-1"][2])
    assert len({line.index(rows[line.split()[0]][2]) for line in lines[1:]}) == 1  # one column

    jobs = json.loads(ctl(daemon, "jobs", "--json"))
    assert [j["id"] for j in jobs] == ["main", "job-1"] and all(ISO.fullmatch(j["submitted"]) for j in jobs)
    assert jobs[1]["overrides"] == {"training": {"steps": 30, "learning_rate": 0.002}}


def test_no_daemon_at_the_default_socket_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RUNTIME_DIRECTORY", "INVOCATION_ID")}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "cllm.coord", "ctl", "status"], capture_output=True, text=True,
                            env=env, timeout=60)
    if Path("/run/cllm/control.sock").exists():
        pytest.skip("a system daemon's socket is on this machine")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"no daemon answers at {tmp_path}/cllm/control.sock" in result.stderr


def test_stats_of_ranks_show_each_rank_with_its_communication_time():
    from cllm.coord.cli.ctl_view import show

    def worker(sphere, busy):
        return {"sphere": sphere, "group": sphere - 1, "batches": 4, "tokens": 128, "busy_s": busy,
                "waiting_s": 1.0 - busy, "children": []}

    stats = {"ranks": 2, "batches": 16, "tokens": 512, "busy_s": 2.5, "waiting_s": 1.5, "communication_s": 0.8,
             "children": [{"rank": r, "batches": 8, "tokens": 256, "busy_s": 1.25, "waiting_s": 0.75,
                           "communication_s": 0.4, "children": [worker(1, 0.75), worker(2, 0.5)]} for r in (0, 1)]}
    assert show("stats", stats).splitlines() == [
        "2 ranks                   batches       16  tokens          512  busy  62.5%  waiting  37.5%  communication 0.8s",
        "├─ rank 0                 batches        8  tokens          256  busy  62.5%  waiting  37.5%  communication 0.4s",
        "│  ├─ worker 1 (group 0)  batches        4  tokens          128  busy  75.0%  waiting  25.0%",
        "│  └─ worker 2 (group 1)  batches        4  tokens          128  busy  50.0%  waiting  50.0%",
        "└─ rank 1                 batches        8  tokens          256  busy  62.5%  waiting  37.5%  communication 0.4s",
        "   ├─ worker 1 (group 0)  batches        4  tokens          128  busy  75.0%  waiting  25.0%",
        "   └─ worker 2 (group 1)  batches        4  tokens          128  busy  50.0%  waiting  50.0%",
    ]
