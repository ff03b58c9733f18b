"""Ranks under a real `mpiexec -n 2`: the collectives, and every rank ending when one dies or hangs."""

import json
import time

from .mpirun import json_lines, mpiexec, script

TIMEOUT = 3.0  # the collectives' timeout in the fault runs


def test_collectives_sum_agree_gather_and_check_on_two_ranks():
    run = mpiexec(script("collectives"))
    assert run.returncode == 0, run.stderr
    seen = {out["rank"]: out for out in json_lines(run.stdout) + json_lines(run.stderr)}
    assert sorted(seen) == [0, 1]
    assert seen[0]["share"] == [0, 3] and seen[1]["share"] == [3, 7]
    for out in seen.values():
        assert out["size"] == 2
        assert out["sum32"] == [3.0 * i for i in range(10)]
        assert out["sum64"] == [0.1 + 0.2, 2e-9]
        assert out["issued_early"] == 1 and out["bucketed"] == [3.0]
        assert not any(out["quiet"].values())
        # rank 0's decision reaches both; rank 1's own requests (but a stop) count for nothing
        assert out["rank0_decides"] == {**out["quiet"], "pause": True, "workers": 3}
        assert out["any_rank_stops"] == {**out["quiet"], "stop": True}
        assert "settings of rank 1 differ from rank 0's" in out["different_settings"]
        assert out["diverged"].startswith("at step 200 the weights of rank 1 differ from rank 0's")
        assert out["step"] == [[1.5], 21.5, 128]
        assert out["scores"] == [7.5, 200, 61]
    stats = seen[0]["stats"]  # rank -> groups -> workers, each rank with its communication time
    assert stats["ranks"] == 2 and stats["batches"] == 4 and stats["busy_s"] == 3.0
    assert [child["rank"] for child in stats["children"]] == [0, 1]
    assert all(child["communication_s"] > 0 and child["children"][0]["sphere"] == 1 for child in stats["children"])
    assert seen[1]["stats"] is None
    assert seen[0]["gathered"] == [{"rank": 0, "busy_s": 0.0}, {"rank": 1, "busy_s": 1.5}]
    assert seen[1]["gathered"] is None
    assert seen[0]["collectives"] == seen[1]["collectives"]


def fault_run(mode: str, launcher=()):
    started = time.monotonic()
    run = mpiexec(script("fault"), mode, TIMEOUT, launcher=launcher, timeout=60)
    return run, time.monotonic() - started


def lost_line(run) -> dict:
    lost = [e for e in json_lines(run.stdout) if e.get("event") == "rank_lost"]
    assert len(lost) == 1, run.stdout + run.stderr
    return lost[0]


def test_a_frozen_rank_is_named_and_every_rank_ends_within_the_timeout():
    run, seconds = fault_run("stop")  # SIGSTOP: no heartbeat, no collective
    assert run.returncode != 0
    steps = [line for line in run.stdout.splitlines() if line.startswith("step ")]
    assert steps == ["step 1", "step 2"]
    lost = lost_line(run)
    assert lost["rank"] == 0 and lost["failed"] == [1] and lost["during"] == "the gradient allreduce of step 3"
    assert "rank 1 has not been heard from" in lost["reason"]
    assert seconds < TIMEOUT + 20  # rank 0's timeout, then MPI_Abort ends the frozen rank too


def test_a_rank_that_never_reaches_the_collective_is_named():
    run, _ = fault_run("stray")  # its event loop still beats, its collective never comes
    assert run.returncode != 0
    lost = lost_line(run)
    assert lost["failed"] == [1] and "rank 1 is alive but never reached it" in lost["reason"]


def test_a_dead_rank_ends_the_other_with_or_without_the_launchers_cleanup():
    run, seconds = fault_run("kill")  # mpiexec kills the whole job as soon as one rank dies badly
    assert run.returncode != 0 and "BAD TERMINATION" in run.stdout + run.stderr
    assert seconds < TIMEOUT + 20
    run, seconds = fault_run("kill", launcher=("-disable-auto-cleanup",))
    assert run.returncode != 0 and seconds < TIMEOUT + 20
    lost = [e for e in json_lines(run.stdout) if e.get("event") == "rank_lost"]
    assert all(e["failed"] == [1] and "has not been heard from" in e["reason"] for e in lost)


def corpus_run(tmp_path, layout: str) -> dict:
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * i}\n" for i in range(2000))
    (tmp_path / "corpus.txt").write_text(text)
    (tmp_path / "other.txt").write_text(text.upper())
    run = mpiexec(script("corpus"), tmp_path / "corpus.txt", tmp_path, layout)
    assert run.returncode == 0, run.stderr
    return {out["rank"]: out for out in json_lines(run.stdout) + json_lines(run.stderr)}


def test_rank_0_alone_writes_the_token_cache_and_every_rank_trains_on_its_ids(tmp_path):
    seen = corpus_run(tmp_path, "shared")  # one cache directory both ranks see: rank 1 reads rank 0's entry
    assert seen[0]["entry"] == seen[1]["entry"] and seen[0]["digest"] == seen[1]["digest"]
    assert len(seen[0]["cache"]) == 1
    seen = corpus_run(tmp_path, "per-rank")  # a cache of its own per rank: rank 1 encodes in a scratch directory
    assert seen[0]["digest"] == seen[1]["digest"] and seen[0]["tokens"] == seen[1]["tokens"]
    assert len(seen[0]["cache"]) == 1 and seen[1]["cache"] is None


def test_ranks_given_different_corpora_refuse_to_train(tmp_path):
    seen = corpus_run(tmp_path, "different")
    assert seen[0]["error"] == seen[1]["error"] == ("the token ids of the corpus of rank 1 differ from rank 0's: give "
                                                    "every rank the same command line, configuration and data")
