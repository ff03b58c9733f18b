"""A submitted job reads only what the operator allows and writes nothing wider than the unit's UMask."""

import os
import stat

import pytest

from cllm.coord.errors import UserError
from cllm.coord.service.config import load_config, merge_job

from .daemon import Daemon, write_config


@pytest.fixture
def config(tmp_path):
    (tmp_path / "corpora").mkdir()
    (tmp_path / "corpora" / "own.txt").write_text("the operator's corpus")
    (tmp_path / "state" / "data").mkdir(parents=True)
    (tmp_path / "state" / "data" / "mine.txt").write_text("a job's corpus")
    (tmp_path / "conf.toml").write_text('[data]\npath = "corpora"\n[service]\nstate_dir = "state"\n')
    return load_config(tmp_path / "conf.toml", {})


@pytest.mark.parametrize("data", [{"path": "/etc/shadow"}, {"path": "state/../../outside.txt"},
                                  {"path": "state/data/link"}, {"path": "state/up/secret.txt"},
                                  {"cache_dir": "/tmp/elsewhere"}, {"cache_dir": "state/../cache"}],
                         ids=["absolute", "dot-dot", "file-link", "dir-link", "cache-outside", "cache-dot-dot"])
def test_a_job_cannot_reach_outside_the_allowed_roots(config, tmp_path, data):
    (tmp_path / "secret.txt").write_text("not for jobs")
    os.symlink("/etc/shadow", tmp_path / "state" / "data" / "link")
    os.symlink(tmp_path, tmp_path / "state" / "up")
    with pytest.raises(UserError, match="outside") as caught:
        merge_job(config, {"data": data})
    assert "\n" not in str(caught.value)


def test_a_job_may_read_the_state_directory_and_the_configuration_s_own_corpus(config, tmp_path):
    assert merge_job(config, {"data": {"path": "state/data/mine.txt"}}).run.data.path == \
        (tmp_path / "state" / "data" / "mine.txt").resolve()
    assert merge_job(config, {"data": {"path": "corpora/own.txt", "cache_dir": "state/cache-2"}}).run.data.path == \
        (tmp_path / "corpora" / "own.txt").resolve()


def test_configured_data_roots_replace_the_defaults(tmp_path):
    (tmp_path / "srv").mkdir()
    (tmp_path / "conf.toml").write_text('[service]\nstate_dir = "state"\ndata_roots = ["srv"]\n')
    config = load_config(tmp_path / "conf.toml", {})
    assert config.service.data_roots == (tmp_path / "srv",)
    merge_job(config, {"data": {"path": "srv/a.txt"}})
    with pytest.raises(UserError, match="outside"):
        merge_job(config, {"data": {"path": "state/a.txt"}})


def test_the_daemon_refuses_such_a_job_and_writes_nothing_wider_than_its_umask(tmp_path):
    old = os.umask(0o022)  # as a shell would: the daemon narrows it to the unit's 0027 itself
    try:
        daemon = Daemon(write_config(tmp_path, checkpoint_interval=5))
    finally:
        os.umask(old)
    try:
        refused = daemon.ctl("submit", job={"data": {"path": "/etc/shadow"}})
        assert not refused["ok"] and "outside" in refused["error"]["detail"]
        daemon.wait_for(lambda e: e["event"] == "checkpoint_saved")
    finally:
        assert daemon.stop() == 0
    written = [p for d in ("state", "cache") for p in (tmp_path / d).rglob("*") if not p.is_symlink()]
    assert any(p.name == "tokens.bin" for p in written) and any(p.name == "model.safetensors" for p in written)
    wide = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written
            if stat.S_IMODE(p.stat().st_mode) & 0o027}
    assert wide == {}
