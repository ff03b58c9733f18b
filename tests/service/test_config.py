"""The daemon's configuration loader: defaults, refusals naming file and key, paths, reloads."""

import dataclasses
import grp
import os
import shutil
import tomllib
from pathlib import Path

import pytest

from cllm.coord.errors import UserError
from cllm.coord.service.config import (RUN_KEYS, TABLES, default_socket, keys_of, load_config, merge_job,
                                       reload_changes)
from cllm.coord.training.config import RunConfig, values_of

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "cllm.toml"


def write(directory: Path, text: str, name: str = "cllm.toml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def refusal(path: Path, environ=None) -> str:
    """The one-line message load_config refuses ``path`` with."""
    with pytest.raises(UserError) as caught:
        load_config(path, environ or {})
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_example_loads_and_holds_every_key_at_its_default(tmp_path):
    example = load_config(shutil.copy(EXAMPLE, tmp_path / "cllm.toml"), {})
    empty = load_config(write(tmp_path, "", "empty.toml"), {})
    assert dataclasses.replace(example, source=empty.source) == empty
    written = tomllib.loads(EXAMPLE.read_text())
    assert list(written) == list(TABLES)
    for table in TABLES:
        assert sorted(written[table]) == sorted(keys_of(table)), table
        assert [key for key in written[table] if key in RUN_KEYS[table]] == list(RUN_KEYS[table]), table


def test_defaults(tmp_path):
    c = load_config(write(tmp_path, ""), {})
    assert c.source == tmp_path / "cllm.toml"
    assert c.run.data.path is None and c.run.data.tokenizer == "char" and c.run.data.include == ()
    assert c.service.state_dir == tmp_path / "cllm-state"
    assert c.service.socket == Path("/run/cllm/control.sock")  # no runtime directory of the user's or systemd's
    assert c.run.data.cache_dir == tmp_path / "cllm-state" / "cache"
    assert dataclasses.asdict(c.run.model) == {"embed_dim": 128, "num_layers": 4, "num_heads": 4, "seq_len": 64,
                                               "init_from": None}
    t = values_of(c.run)
    assert {k: t[k] for k in ("steps", "threads", "optimizer", "learning_rate", "lr_schedule", "decay_steps")} == \
        {"steps": 1000, "threads": 0, "optimizer": "adamw", "learning_rate": 1e-3, "lr_schedule": "constant",
         "decay_steps": 0}
    assert (t["eval_interval"], t["checkpoint_interval"], t["keep_checkpoints"]) == (100, 100, 3)
    assert (c.run.step_timeout, c.service.stall_timeout, c.service.memory_limit_mb) == (600.0, 300.0, 0)
    assert (c.logging.level, c.logging.format) == ("info", "json")
    assert (c.metrics.enabled, c.metrics.address, c.metrics.port) == (False, "127.0.0.1", 9464)


BAD_VALUES = [
    ("data", "path", "3"), ("data", "tokenizer", '"word"'), ("data", "vocab_size", "0"),
    ("data", "include", '"*.py"'), ("data", "exclude", "[1]"), ("data", "cache_dir", "false"),
    ("model", "embed_dim", "0"), ("model", "num_layers", "true"), ("model", "num_heads", "-2"),
    ("model", "seq_len", "1.5"), ("model", "embed_dim", '"128"'), ("training", "threads", "1025"),
    ("training", "batch_size", "0"), ("training", "grad_accum", "-1"), ("training", "steps", "0"),
    ("training", "steps", "1e3"), ("training", "threads", "-1"), ("training", "seed", "-1"),
    ("training", "optimizer", '"lion"'), ("training", "learning_rate", "-1e-3"),
    ("training", "learning_rate", "inf"), ("training", "learning_rate", "nan"), ("training", "learning_rate", '"1e-3"'),
    ("training", "learning_rate", "true"), ("training", "beta1", "1.0"), ("training", "beta1", "-0.1"),
    ("training", "beta2", "1"), ("training", "eps", "0"), ("training", "weight_decay", "-0.1"),
    ("training", "decay_all", "1"), ("training", "nesterov", '"yes"'), ("training", "clip_norm", "-1"),
    ("training", "lr_schedule", '"step"'), ("training", "warmup_steps", "-1"), ("training", "decay_steps", "-1"),
    ("training", "min_lr", "-1e-5"), ("training", "cycle_steps", "0"), ("training", "eval_interval", "-1"),
    ("training", "eval_batches", "0"), ("training", "patience", "-1"), ("training", "max_bad_steps", "0"),
    ("training", "checkpoint_interval", "-5"), ("training", "keep_checkpoints", "0"),
    ("service", "state_dir", "[]"), ("service", "socket", "1"), ("service", "socket_group", "5"),
    ("service", "step_timeout", "0"), ("service", "step_timeout", "-inf"), ("service", "stall_timeout", "-1"),
    ("service", "memory_limit_mb", "-1"), ("service", "memory_limit_mb", "1.5"),
    ("logging", "level", '"verbose"'), ("logging", "format", '"xml"'),
    ("metrics", "enabled", '"yes"'), ("metrics", "port", "0"), ("metrics", "port", "65536"),
    ("metrics", "address", "127"), ("metrics", "address", '"0.0.0.0"'),
]


@pytest.mark.parametrize("table,key,value", BAD_VALUES, ids=[f"{t}.{k}={v}" for t, k, v in BAD_VALUES])
def test_bad_values_are_refused_naming_file_table_and_key(tmp_path, table, key, value):
    path = write(tmp_path, f"[{table}]\n{key} = {value}\n")
    message = refusal(path)
    assert message.startswith(f"{path}: [{table}] {key} must be ")
    assert ", got " in message


@pytest.mark.parametrize("text,fragment", [
    ("[model]\nembed_dim = 130\nnum_heads = 4\n", "[model] embed_dim 130 is not divisible by [model] num_heads 4"),
    ('[data]\ntokenizer = "bpe"\nvocab_size = 256\n', '[data] vocab_size must be at least 257 with the bpe tokenizer'),
    ('[training]\nlr_schedule = "exponential"\n', 'the exponential schedule needs a positive [training] min_lr'),
    ('[training]\nlr_schedule = "cosine"\nlearning_rate = 0.01\nmin_lr = 0.1\n',
     "[training] min_lr 0.1 is above [training] learning_rate 0.01"),
    (f'[service]\nsocket = "/tmp/{"s" * 110}.sock"\n', "is longer than a Unix socket path may be"),
])
def test_combinations_that_cannot_work_are_refused(tmp_path, text, fragment):
    path = write(tmp_path, text)
    assert fragment in refusal(path) and str(path) in refusal(path)


def test_char_vocab_size_and_constant_min_lr_are_not_constrained(tmp_path):
    c = load_config(write(tmp_path, "[data]\nvocab_size = 100\n[training]\nmin_lr = 1.0\n"), {})
    assert c.run.data.vocab_size == 100 and c.run.schedule.min_lr == 1.0


def test_floats_take_integers_and_lists_become_tuples(tmp_path):
    c = load_config(write(tmp_path, '[training]\nlearning_rate = 1\n[service]\nstep_timeout = 60\n'
                                    '[data]\ninclude = ["*.py", "*.md"]\n'), {})
    assert c.run.schedule.lr == 1.0 and isinstance(c.run.schedule.lr, float)
    assert c.run.step_timeout == 60.0 and isinstance(c.run.step_timeout, float)
    assert c.run.data.include == ("*.py", "*.md")


@pytest.mark.parametrize("text,expected", [
    ("[trainng]\nsteps = 5\n", "unknown table [trainng]; allowed tables: data, model, training, service, logging, "
                               "metrics"),
    ("[training]\nlerning_rate = 1e-3\n", "unknown key [training] lerning_rate; allowed: batch_size, grad_accum, "),
    ("[training.schedule]\nkind = 1\n", "unknown key [training] schedule; allowed: "),
    ("steps = 5\n", "key steps outside any table; allowed tables: "),
    ("training = 5\n", "training must be a table, got 5; write its keys under [training]"),
])
def test_unknown_tables_and_keys_are_refused_by_name(tmp_path, text, expected):
    path = write(tmp_path, text)
    assert refusal(path).startswith(f"{path}: {expected}")


def test_toml_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "[model]\nembed_dim = 128\nnum_heads = \n")
    message = refusal(path)
    assert message.startswith(f"{path}: invalid TOML: ") and "line 3" in message


def test_missing_or_unreadable_file_is_refused_by_name(tmp_path):
    assert refusal(tmp_path / "nope.toml").startswith(f"{tmp_path / 'nope.toml'}: no such configuration file")
    assert refusal(tmp_path).startswith(f"{tmp_path}: cannot read the configuration")
    binary = tmp_path / "latin1.toml"
    binary.write_bytes(b'[data]\npath = "caf\xe9"\n')
    assert "not UTF-8" in refusal(binary)


def test_state_and_runtime_directories_come_from_systemd(tmp_path):
    path = write(tmp_path, "")
    c = load_config(path, {"STATE_DIRECTORY": "/var/lib/cllm:/var/lib/other", "RUNTIME_DIRECTORY": "/run/cllm"})
    assert c.service.state_dir == Path("/var/lib/cllm")
    assert c.run.data.cache_dir == Path("/var/lib/cllm/cache")
    assert c.service.socket == Path("/run/cllm/control.sock")
    c = load_config(path, {"STATE_DIRECTORY": "/var/lib/cllm", "RUNTIME_DIRECTORY": "/run/cllm:/run/other"})
    assert c.service.socket == Path("/run/cllm/control.sock")
    c = load_config(path, {"STATE_DIRECTORY": "/var/lib/cllm", "INVOCATION_ID": "1f", "XDG_RUNTIME_DIR": "/run/user/7"})
    assert c.service.socket == Path("/run/cllm/control.sock")  # the service's, though it has no RuntimeDirectory=


def test_a_user_s_daemon_listens_in_the_user_s_runtime_directory(tmp_path):
    c = load_config(write(tmp_path, ""), {"XDG_RUNTIME_DIR": "/run/user/1000"})
    assert c.service.socket == Path("/run/user/1000/cllm/control.sock")
    assert c.service.socket == default_socket({"XDG_RUNTIME_DIR": "/run/user/1000"})  # where `cllm ctl` looks


def test_keys_given_win_over_systemd_directories(tmp_path):
    path = write(tmp_path, '[service]\nstate_dir = "/srv/cllm"\nsocket = "/srv/c.sock"\n')
    c = load_config(path, {"STATE_DIRECTORY": "/var/lib/cllm", "RUNTIME_DIRECTORY": "/run/cllm"})
    assert (c.service.state_dir, c.service.socket, c.run.data.cache_dir) == \
        (Path("/srv/cllm"), Path("/srv/c.sock"), Path("/srv/cllm/cache"))


def test_relative_paths_are_relative_to_the_config_file_not_the_cwd(tmp_path, monkeypatch):
    write(tmp_path, '[data]\npath = "corpus.txt"\ncache_dir = "../cache"\n[model]\ninit_from = "models/gpt2"\n'
                    '[service]\nstate_dir = "state"\nsocket = "run/c.sock"\n', "etc/cllm.toml")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    c = load_config(Path("../etc/cllm.toml"), {"STATE_DIRECTORY": "/var/lib/cllm"})
    etc = (tmp_path / "etc").resolve()
    assert c.source.resolve() == etc / "cllm.toml"
    assert c.run.data.path.resolve() == etc / "corpus.txt"
    assert c.run.data.cache_dir.resolve() == tmp_path.resolve() / "cache"
    assert c.run.model.init_from.resolve() == etc / "models" / "gpt2"
    assert c.service.state_dir.resolve() == etc / "state"
    assert c.service.socket.resolve() == etc / "run" / "c.sock"
    assert all(p.is_absolute() for p in (c.run.data.path, c.run.data.cache_dir, c.service.state_dir, c.service.socket))


def test_socket_group_must_exist(tmp_path):
    path = write(tmp_path, '[service]\nsocket_group = "no-such-group-cllm"\n')
    assert '[service] socket_group "no-such-group-cllm" is not a group on this machine' in refusal(path)
    mine = grp.getgrgid(os.getgid()).gr_name
    assert load_config(write(tmp_path, f'[service]\nsocket_group = "{mine}"\n'), {}).service.socket_group == mine


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.10", "::", "localhost", "example.org", ""])
def test_metrics_are_served_on_loopback_only(tmp_path, address):
    message = refusal(write(tmp_path, f'[metrics]\naddress = "{address}"\n'))
    assert "[metrics] address must be a loopback address" in message and "loopback only" in message


@pytest.mark.parametrize("address", ["127.0.0.1", "127.1.2.3", "::1"])
def test_loopback_metrics_addresses_are_accepted(tmp_path, address):
    assert load_config(write(tmp_path, f'[metrics]\naddress = "{address}"\n'), {}).metrics.address == address


def test_reload_changes_separates_what_applies_now_from_what_needs_a_restart(tmp_path):
    path = write(tmp_path, "")
    old = load_config(path, {})
    assert reload_changes(old, load_config(path, {})) == ({}, [])
    path.write_text('[logging]\nlevel = "debug"\n[training]\neval_interval = 7\ncheckpoint_interval = 50\n'
                    'learning_rate = 3e-4\n[model]\nnum_layers = 6\n[metrics]\nenabled = true\n')
    changed, restart = reload_changes(old, load_config(path, {}))
    assert changed == {"logging.level": ("info", "debug"), "training.eval_interval": (100, 7),
                       "training.checkpoint_interval": (100, 50)}
    assert restart == ["model.num_layers", "training.learning_rate", "metrics.enabled"]


def test_run_settings_are_those_of_the_command_line(tmp_path):
    c = load_config(write(tmp_path, '[data]\npath = "corpus.txt"\nexclude = ["*.md"]\n'
                                    "[training]\ndecay_steps = 800\nsteps = 900\nthreads = 3\n"), {})
    assert isinstance(c.run, RunConfig)
    assert c.run.data.path == tmp_path / "corpus.txt" and c.run.data.exclude == ("*.md",)
    assert (c.run.schedule.decay_steps, c.run.steps, c.run.threads) == (800, 900, 3)


def test_a_job_overrides_data_model_and_training_checked_like_the_file(tmp_path):
    config = load_config(write(tmp_path, '[training]\nsteps = 300\n[service]\ndata_roots = ["."]\n'), {})
    job = merge_job(config, {"training": {"steps": 30, "learning_rate": 1}, "data": {"path": "more.txt"}})
    assert (job.run.steps, job.run.schedule.lr) == (30, 1.0)
    assert job.run.data.path == tmp_path / "more.txt" and job.service == config.service
    for overrides, expected in [
        ({"training": {"lerning_rate": 1}}, "job: unknown key [training] lerning_rate; allowed: "),
        ({"service": {"socket": "/tmp/x"}}, "job: unknown table [service]; a job may set: data, model, training"),
        ({"model": {"num_heads": 5}}, "job: [model] embed_dim 128 is not divisible by [model] num_heads 5"),
        ({"training": {"steps": True}}, "job: [training] steps must be a positive integer, got true"),
    ]:
        with pytest.raises(UserError) as caught:
            merge_job(config, overrides)
        assert str(caught.value).startswith(expected)
