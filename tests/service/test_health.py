"""The health monitor notices a stalled worker and memory over the limit, and says what it did."""

import time

import structlog

from cllm.coord.service.health import HealthMonitor
from cllm.coord.nodezero.inbox import Inbox
from cllm.coord.nodezero.spheres import WorkerSphere
from cllm.coord.nodezero.states import SphereState
from cllm.coord.nodezero.tree import plan_tree


class Node:
    def __init__(self, workers):
        self.workers = [WorkerSphere(leaf, 0, Inbox(), None, None) for leaf in plan_tree(workers).leaves()]


def test_a_worker_processing_past_the_stall_timeout_is_reported_once():
    node = Node(3)
    leaf = node.workers[1]
    leaf.machine.to(SphereState.READY)
    leaf.machine.to(SphereState.IDLE)
    leaf.machine.to(SphereState.PROCESSING)
    monitor = HealthMonitor(node, stall_timeout=0.05, memory_limit_mb=0, on_memory=None)
    with structlog.testing.capture_logs() as logs:
        monitor.check()  # not yet
        time.sleep(0.1)
        monitor.check()
        monitor.check()  # reported once, not at every check
    stalled = [e for e in logs if e["event"] == "health_worker_stalled"]
    assert len(stalled) == 1 and stalled[0]["sphere"] == leaf.id and "reported" in stalled[0]["action"]


def test_memory_over_the_limit_stops_the_run_after_the_step():
    stops = []
    monitor = HealthMonitor(Node(1), stall_timeout=60, memory_limit_mb=1, on_memory=lambda: stops.append(1))
    with structlog.testing.capture_logs() as logs:
        monitor.check()
        monitor.check()
    assert stops == [1]
    (event,) = [e for e in logs if e["event"] == "health_memory_high"]
    assert event["resident_mb"] >= 1 and event["action"] == "checkpoint and stop after this step"


def test_a_non_finite_loss_is_reported():
    monitor = HealthMonitor(Node(1), stall_timeout=60, memory_limit_mb=0, on_memory=None)
    with structlog.testing.capture_logs() as logs:
        monitor.loss(7, 2.5)
        monitor.loss(8, float("nan"))
    assert [(e["event"], e["step"]) for e in logs] == [("health_loss_not_finite", 8)]
