"""The daemon's configuration: one TOML file, read at start and again on SIGHUP.

Every table and key is optional; deploy/cllm.toml lists them all with their defaults. A bad
file is refused whole, with one line naming the file, the table and the key. Relative paths
are relative to the configuration file's directory, so a file means the same from any cwd.
"""

import dataclasses
import grp
import ipaddress
import json
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class Rule:
    """What a key's value must be: a TOML type and a test of its range, described for the error message."""

    kind: type  # bool, int, float, str, or tuple for a list of strings
    allowed: str
    test: Callable = lambda value: True


def setting(default, rule: Rule):
    return field(default=default, metadata={"rule": rule})


def one_of(*options: str) -> Rule:
    return Rule(str, "one of " + ", ".join(f'"{o}"' for o in options), lambda v: v in options)


def is_loopback(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


POSITIVE = Rule(int, "a positive integer", lambda v: v > 0)
COUNT = Rule(int, "an integer >= 0", lambda v: v >= 0)
SECONDS = Rule(float, "a number of seconds > 0", lambda v: v > 0)
RATE = Rule(float, "a finite number > 0", lambda v: v > 0)
NON_NEGATIVE = Rule(float, "a finite number >= 0", lambda v: v >= 0)
BETA = Rule(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
FLAG = Rule(bool, "true or false")
NAME = Rule(str, "a string")
PATH = Rule(str, "a path (a string; empty for the default)")  # "" becomes None, else an absolute Path
GLOBS = Rule(tuple, "a list of strings")
PORT = Rule(int, "a port number from 1 to 65535", lambda v: 1 <= v <= 65535)
LOOPBACK = Rule(str, "a loopback address, 127.0.0.0/8 or ::1 (metrics are served on loopback only; "
                     "reach them from elsewhere through a proxy)", is_loopback)


@dataclass(frozen=True)
class DataSettings:
    """[data]: the corpus and its tokenizer. ``path`` None is the Python standard library's source."""

    path: Path | None = setting(None, PATH)
    tokenizer: str = setting("char", one_of("char", "bpe"))
    vocab_size: int = setting(8192, POSITIVE)  # bpe only
    include: tuple = setting((), GLOBS)
    exclude: tuple = setting((), GLOBS)
    cache_dir: Path | None = setting(None, PATH)  # once loaded, never None: default <state_dir>/cache


@dataclass(frozen=True)
class ModelSettings:
    """[model]: sizes, named as on the command line."""

    embed_dim: int = setting(128, POSITIVE)
    num_layers: int = setting(4, POSITIVE)
    num_heads: int = setting(4, POSITIVE)
    seq_len: int = setting(64, POSITIVE)


@dataclass(frozen=True)
class TrainingSettings:
    """[training]: the run settings, named as on the command line; ``threads`` 0 is the usable cores."""

    batch_size: int = setting(16, POSITIVE)
    grad_accum: int = setting(1, POSITIVE)
    steps: int = setting(1000, POSITIVE)
    threads: int = setting(0, COUNT)
    seed: int = setting(1337, COUNT)  # numpy takes no negative seed
    optimizer: str = setting("adamw", one_of("adamw", "adam", "sgd"))
    learning_rate: float = setting(1e-3, RATE)
    beta1: float = setting(0.9, BETA)
    beta2: float = setting(0.95, BETA)
    eps: float = setting(1e-8, RATE)
    weight_decay: float = setting(0.0, NON_NEGATIVE)
    decay_all: bool = setting(False, FLAG)
    nesterov: bool = setting(False, FLAG)
    clip_norm: float = setting(1.0, NON_NEGATIVE)  # 0: no clipping
    lr_schedule: str = setting("constant", one_of("constant", "linear", "cosine", "exponential", "cyclical"))
    warmup_steps: int = setting(0, COUNT)
    decay_steps: int = setting(0, COUNT)  # 0: steps
    min_lr: float = setting(0.0, NON_NEGATIVE)
    cycle_steps: int = setting(500, POSITIVE)
    eval_interval: int = setting(100, COUNT)  # 0: at the end only
    eval_batches: int = setting(8, POSITIVE)
    patience: int = setting(0, COUNT)  # 0: never stop early
    max_bad_steps: int = setting(5, POSITIVE)
    checkpoint_interval: int = setting(100, COUNT)  # 0: at the end only
    keep_checkpoints: int = setting(3, POSITIVE)


@dataclass(frozen=True)
class ServiceSettings:
    """[service]: where the daemon keeps its state and listens, and when it calls a run stuck."""

    state_dir: Path | None = setting(None, PATH)  # once loaded, never None
    socket: Path | None = setting(None, PATH)  # once loaded, never None
    socket_group: str = setting("", NAME)  # "": only the service's user and root
    step_timeout: float = setting(600.0, SECONDS)
    stall_timeout: float = setting(300.0, SECONDS)
    memory_limit_mb: int = setting(0, COUNT)  # 0: no limit


@dataclass(frozen=True)
class LoggingSettings:
    level: str = setting("info", one_of("debug", "info", "warning", "error"))
    format: str = setting("json", one_of("json", "console"))


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: a Prometheus endpoint on a loopback address."""

    enabled: bool = setting(False, FLAG)
    address: str = setting("127.0.0.1", LOOPBACK)
    port: int = setting(9464, PORT)


@dataclass(frozen=True)
class ServiceConfig:
    """The whole file: one frozen settings object per table."""

    source: Path  # the configuration file, absolute
    data: DataSettings
    model: ModelSettings
    training: TrainingSettings
    service: ServiceSettings
    logging: LoggingSettings
    metrics: MetricsSettings


TABLES = {"data": DataSettings, "model": ModelSettings, "training": TrainingSettings, "service": ServiceSettings,
          "logging": LoggingSettings, "metrics": MetricsSettings}
JOB_TABLES = ("data", "model", "training")  # what a submitted job may change
RELOADABLE = frozenset({("logging", "level"), ("training", "eval_interval"), ("training", "checkpoint_interval")})
MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


def load_config(path: Path, environ: Mapping = os.environ) -> ServiceConfig:
    """The configuration in ``path``, checked, with every path resolved to an absolute one.

    ``environ`` supplies systemd's STATE_DIRECTORY and RUNTIME_DIRECTORY, the defaults of
    [service] state_dir and socket.
    """
    path, where = Path(path), str(path)
    raw = read_toml(path)
    for table, value in raw.items():
        if table not in TABLES:
            what = f"unknown table [{table}]" if isinstance(value, dict) else f"key {table} outside any table"
            raise UserError(f"{where}: {what}; allowed tables: {', '.join(TABLES)}")
    given = {table: parse_table(table, raw.get(table, {}), where) for table in TABLES}
    base = path.absolute().parent
    service = given["service"]
    state_dir = (located(base, service.get("state_dir", "")) or first_directory(environ, "STATE_DIRECTORY")
                 or base / "cllm-state")
    runtime_dir = first_directory(environ, "RUNTIME_DIRECTORY")
    socket = located(base, service.get("socket", "")) or (runtime_dir or state_dir) / "control.sock"
    given["service"] = {**service, "state_dir": state_dir, "socket": socket}
    given["data"] = data_paths({"path": "", "cache_dir": "", **given["data"]}, base, state_dir)
    config = ServiceConfig(source=path.absolute(), **{table: TABLES[table](**given[table]) for table in TABLES})
    check_combinations(config, where)
    return config


def merge_job(config: ServiceConfig, overrides: Mapping, where: str = "job") -> ServiceConfig:
    """``config`` with a submitted job's [data], [model] and [training] keys laid over it, checked as
    the file's are; its relative paths are relative to the configuration file's directory."""
    for table in overrides:
        if table not in JOB_TABLES:
            raise UserError(f"{where}: unknown table [{table}]; a job may set: {', '.join(JOB_TABLES)}")
    given = {table: parse_table(table, overrides.get(table, {}), where) for table in JOB_TABLES}
    given["data"] = data_paths(given["data"], config.source.parent, config.service.state_dir)
    merged = dataclasses.replace(config, **{table: dataclasses.replace(getattr(config, table), **given[table])
                                            for table in JOB_TABLES})
    check_combinations(merged, where)
    return merged


def reload_changes(old: ServiceConfig, new: ServiceConfig) -> tuple[dict, list]:
    """What differs between two loads of the configuration: ({"table.key": (old, new)} of the settings
    that apply while running, ["table.key", ...] of the settings that need a restart)."""
    reloadable, restart = {}, []
    for table in TABLES:
        before, after = getattr(old, table), getattr(new, table)
        for f in dataclasses.fields(before):
            was, now = getattr(before, f.name), getattr(after, f.name)
            if was != now:
                if (table, f.name) in RELOADABLE:
                    reloadable[f"{table}.{f.name}"] = (was, now)
                else:
                    restart.append(f"{table}.{f.name}")
    return reloadable, restart


def training_settings(config: ServiceConfig) -> dict:
    """The run settings by their command-line names (cli.RUN_SETTINGS), as RunRequest takes them:
    data a path string or None, include and exclude lists, decay_steps None for "the step count"."""
    d, t = config.data, config.training
    settings = {"data": str(d.path) if d.path is not None else None, "include": list(d.include),
                "exclude": list(d.exclude)}
    settings.update((f.name, getattr(t, f.name)) for f in dataclasses.fields(t) if f.name != "threads")
    settings["decay_steps"] = t.decay_steps or None
    return settings


# ----- reading and checking -----

def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such configuration file; give the path of a TOML file "
                        "(deploy/cllm.toml is an example)") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the configuration ({error.strerror}); "
                        "give a readable TOML file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save the configuration as UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: invalid TOML: {error}; fix the syntax there") from None


def parse_table(table: str, raw, where: str) -> dict:
    """The keys given in one table, checked and converted to their kinds (paths still strings)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: {table} must be a table, got {show(raw)}; write its keys under [{table}]")
    rules = {f.name: f.metadata["rule"] for f in dataclasses.fields(TABLES[table])}
    values = {}
    for key, value in raw.items():
        rule = rules.get(key)
        if rule is None:
            raise UserError(f"{where}: unknown key [{table}] {key}; allowed: {', '.join(rules)}")
        if not has_kind(value, rule.kind) or not rule.test(value):
            raise UserError(f"{where}: [{table}] {key} must be {rule.allowed}, got {show(value)}")
        values[key] = float(value) if rule.kind is float else tuple(value) if rule.kind is tuple else value
    return values


def has_kind(value, kind: type) -> bool:
    """Whether a TOML value is of ``kind``: no bool for a number, no float for an int, ints for a float."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and abs(value) <= sys.float_info.max  # not inf, not nan
    if kind is tuple:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, kind)


def show(value) -> str:
    """A value as TOML spells it, for error messages."""
    if isinstance(value, dict):
        return "a table"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)  # dates and times


def located(base: Path, text: str) -> Path | None:
    """``text`` as an absolute path, relative ones taken from ``base``; None for ""."""
    return base / Path(text).expanduser() if text else None


def first_directory(environ: Mapping, name: str) -> Path | None:
    """systemd's StateDirectory= and RuntimeDirectory= may list several directories, ':'-separated."""
    text = environ.get(name, "").split(":")[0]
    return Path(text).absolute() if text else None


def data_paths(values: dict, base: Path, state_dir: Path) -> dict:
    """[data] ``values`` with path and cache_dir (where given) made absolute: path "" is the built-in
    corpus (None), cache_dir "" is <state_dir>/cache."""
    values = dict(values)
    if "path" in values:
        values["path"] = located(base, values["path"])
    if "cache_dir" in values:
        values["cache_dir"] = located(base, values["cache_dir"]) or state_dir / "cache"
    return values


def check_combinations(c: ServiceConfig, where: str) -> None:
    """The checks that need more than one key, or the machine."""
    m, d, t, s = c.model, c.data, c.training, c.service
    if m.embed_dim % m.num_heads:
        raise UserError(f"{where}: [model] embed_dim {m.embed_dim} is not divisible by num_heads {m.num_heads}; "
                        "choose sizes where it is (e.g. embed_dim = 128, num_heads = 4)")
    if d.tokenizer == "bpe" and d.vocab_size < 257:
        raise UserError(f'{where}: [data] vocab_size must be at least 257 with tokenizer = "bpe" (the 256 bytes '
                        f"and one merge), got {d.vocab_size}")
    if t.lr_schedule == "exponential" and t.min_lr <= 0:
        raise UserError(f'{where}: [training] min_lr must be > 0 with lr_schedule = "exponential" (it decays '
                        f"towards min_lr), got {t.min_lr}")
    if t.lr_schedule != "constant" and t.min_lr > t.learning_rate:
        raise UserError(f"{where}: [training] min_lr {t.min_lr} is above learning_rate {t.learning_rate}; "
                        "the schedule's floor must not exceed its peak")
    if len(os.fsencode(s.socket)) > MAX_SOCKET_PATH:
        raise UserError(f"{where}: [service] socket {s.socket} is longer than a Unix socket path may be "
                        f"({MAX_SOCKET_PATH} bytes); set [service] socket to a shorter path")
    if s.socket_group:
        try:
            grp.getgrnam(s.socket_group)
        except KeyError:
            raise UserError(f'{where}: [service] socket_group "{s.socket_group}" is not a group on this machine; '
                            "create it (groupadd) or leave socket_group empty") from None
