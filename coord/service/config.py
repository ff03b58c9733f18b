"""The daemon's configuration: one TOML file, read at start and again on SIGHUP.

Every table and key is optional; deploy/cllm.toml lists them all with their defaults. [data],
[model] and [training] hold the run's settings, the same ones `cllm train` takes (declared in
coord.training.config); [service], [logging] and [metrics] the daemon's own. A bad file is refused
whole, with one line naming the file, the table and the key. Relative paths are relative to the
configuration file's directory, so a file means the same from any cwd.
"""

import dataclasses
import grp
import importlib
import ipaddress
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..logs import LEVELS
from ..settings import (COUNT, FLAG, NAME, PATH, SECONDS, Rule, convert, declared, get, one_of, printable, setting,
                        show)
from ..training.config import BY_NAME, DEFAULT_CACHE, SETTINGS, RunConfig, check, table_of, with_values


def is_loopback(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


PORT = Rule(int, "a port number from 1 to 65535", lambda v: 1 <= v <= 65535)
PATHS = Rule(tuple, "a list of paths (strings)")
MAX_FILE_BYTES = 1 << 20  # a configuration is a few kilobytes
LOOPBACK = Rule(str, "a loopback address, 127.0.0.0/8 or ::1 (metrics are served on loopback only; "
                     "reach them from elsewhere through a proxy)", is_loopback)


@dataclass(frozen=True)
class ServiceSettings:
    """[service]: where the daemon keeps its state and listens, and when it calls a run stuck."""

    state_dir: Path | None = setting(None, PATH, "jobs, checkpoints, caches")  # once loaded, never None
    socket: Path | None = setting(None, PATH, "the control socket")  # once loaded, never None
    socket_group: str = setting("", NAME, "a group whose members may use the control socket")
    data_roots: tuple = setting((), PATHS, "directories a submitted job may read data from; "
                                           "empty: the state directory and [data] path")
    stall_timeout: float = setting(300.0, SECONDS, "seconds a worker may make no progress before it is reported")
    memory_limit_mb: int = setting(0, COUNT, "resident memory at which the run checkpoints and stops (0: none)")


@dataclass(frozen=True)
class LoggingSettings:
    level: str = setting("info", one_of(LEVELS), "the lowest level logged")
    format: str = setting("json", one_of(("json", "console")), "one JSON object a line, or readable lines")


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: a Prometheus endpoint on a loopback address."""

    enabled: bool = setting(False, FLAG, "serve Prometheus metrics over HTTP")
    address: str = setting("127.0.0.1", LOOPBACK, "a loopback address")
    port: int = setting(9464, PORT, "TCP port")


@dataclass(frozen=True)
class ServiceConfig:
    """The whole file: the run it describes, and one frozen settings object per daemon table."""

    source: Path  # the configuration file, absolute
    run: RunConfig
    service: ServiceSettings
    logging: LoggingSettings
    metrics: MetricsSettings


OWN_TABLES = {"service": ServiceSettings, "logging": LoggingSettings, "metrics": MetricsSettings}
RUN_TABLES = ("data", "model", "training")
TABLES = RUN_TABLES + tuple(OWN_TABLES)
JOB_TABLES = RUN_TABLES  # what a submitted job may change
# where each run setting is written in the file; checkpoint_dir is the daemon's (<state_dir>/jobs/<id>)
RUN_KEYS = {table: {s.name: s for s in SETTINGS if table_of(s.name) == table and s.name != "checkpoint_dir"}
            for table in TABLES}
TRAIN_KEYS = {table: {s.name: s for s in SETTINGS if table_of(s.name) == table} for table in TABLES}  # `cllm train`
RELOADABLE = frozenset({"logging.level", "training.eval_interval", "training.checkpoint_interval"})
MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


def spell(name: str) -> str:
    """How the file names a run setting in messages."""
    return f"[{table_of(name)}] {name}"


def load_config(path: Path, environ: Mapping = os.environ) -> ServiceConfig:
    """The configuration in ``path``, checked, with every path resolved to an absolute one.

    ``environ`` supplies systemd's STATE_DIRECTORY and RUNTIME_DIRECTORY (or the user's
    XDG_RUNTIME_DIR), the defaults of [service] state_dir and socket.
    """
    path, where = Path(path), str(path)
    raw = read_toml(path)
    check_tables(raw, where)
    own = {table: parse_own(table, raw.get(table, {}), where) for table in OWN_TABLES}
    base = path.absolute().parent
    service = own["service"]
    state_dir = (located(base, service.get("state_dir", "")) or first_directory(environ, "STATE_DIRECTORY")
                 or base / "cllm-state")
    socket = located(base, service.get("socket", "")) or default_socket(environ)
    own["service"] = {**service, "state_dir": state_dir, "socket": socket,
                      "data_roots": tuple(located(base, root) for root in service.get("data_roots", ()) if root)}
    values = {"cache_dir": state_dir / "cache", **parse_run(raw, TABLES, where, base, state_dir / "cache")}
    config = ServiceConfig(source=path.absolute(), run=with_values(RunConfig(), values),
                           **{table: cls(**own[table]) for table, cls in OWN_TABLES.items()})
    check_combinations(config, where)
    return config


def load_run_file(path: Path) -> dict:
    """The run settings a TOML file gives `cllm train --config`, checked, paths made absolute.

    The file is the daemon's: [data], [model], [training] (which may also name the run's
    checkpoint_dir here) and [service] step_timeout; the daemon's own keys may be there, so that
    one file serves both, and are checked but not used. Relative paths are relative to the
    file's directory.
    """
    path, where = Path(path), str(path)
    raw = read_toml(path)
    check_tables(raw, where)
    for table in OWN_TABLES:
        parse_own(table, raw.get(table, {}), where)
    return parse_run(raw, TABLES, where, path.absolute().parent, DEFAULT_CACHE, TRAIN_KEYS)


def merge_job(config: ServiceConfig, overrides: Mapping, where: str = "job") -> ServiceConfig:
    """``config`` with a submitted job's [data], [model] and [training] keys laid over it, checked as
    the file's are; its relative paths are relative to the configuration file's directory."""
    if not isinstance(overrides, Mapping):
        raise UserError(f"{where}: a job is a table of [data], [model] and [training] keys")
    for table in overrides:
        if table not in JOB_TABLES:
            raise UserError(f"{where}: unknown table [{printable(table)}]; a job may set: {', '.join(JOB_TABLES)}")
    values = confined(parse_run(overrides, JOB_TABLES, where, config.source.parent, config.service.state_dir / "cache"),
                      config, where)
    merged = dataclasses.replace(config, run=with_values(config.run, values))
    check_combinations(merged, where)
    return merged


def confined(values: dict, config: ServiceConfig, where: str) -> dict:
    """A job's [data] values, refused unless its corpus lies under the roots a job may read ([service]
    data_roots, by default the state directory and the configuration's own [data] path) and its cache
    under the state directory; paths resolved, so that no link leads out afterwards."""
    s = config.service
    if values.get("path") is not None:
        roots = s.data_roots or tuple(p for p in (s.state_dir, config.run.data.path) if p is not None)
        real = values["path"].resolve()
        if not any(real.is_relative_to(root.resolve()) for root in roots):
            raise UserError(f"{where}: [data] path {printable(values['path'])} is outside what a job may read "
                            f"({', '.join(map(str, roots))}); put the corpus there, or have the operator add its "
                            "directory to [service] data_roots")
        values["path"] = real
    if "cache_dir" in values:
        real = values["cache_dir"].resolve()
        if not real.is_relative_to(s.state_dir.resolve()):
            raise UserError(f"{where}: [data] cache_dir {printable(values['cache_dir'])} is outside the state directory "
                            f"{s.state_dir}; leave it out, or give a directory inside it")
        values["cache_dir"] = real
    return values


def reload_changes(old: ServiceConfig, new: ServiceConfig) -> tuple[dict, list]:
    """What differs between two loads of the configuration: ({"table.key": (old, new)} of the settings
    that apply while running, ["table.key", ...] of the settings that need a restart)."""
    pairs = [(f"{table_of(s.name)}.{s.name}", get(old.run, s.path), get(new.run, s.path)) for s in SETTINGS]
    for table in OWN_TABLES:
        before, after = getattr(old, table), getattr(new, table)
        pairs += [(f"{table}.{f.name}", getattr(before, f.name), getattr(after, f.name))
                  for f in dataclasses.fields(before)]
    reloadable, restart = {}, []
    for key, was, now in pairs:
        if was != now:
            if key in RELOADABLE:
                reloadable[key] = (was, now)
            else:
                restart.append(key)
    return reloadable, restart


# ----- reading and checking -----

def read_toml(path: Path) -> dict:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)  # a FIFO must not hang the start
        with open(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UserError(f"{path}: not a regular file; give the path of a TOML file")
            if info.st_size > MAX_FILE_BYTES:
                raise UserError(f"{path}: {info.st_size} bytes, larger than a configuration can be "
                                f"({MAX_FILE_BYTES >> 20} MiB); give the right file")
            return tomllib.loads(f.read().decode("utf-8"))
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
    except RecursionError:
        raise UserError(f"{path}: invalid TOML: arrays or tables nested too deeply; fix the file") from None


def check_tables(raw: dict, where: str) -> None:
    for table, value in raw.items():
        if table not in TABLES:
            what = (f"unknown table [{printable(table)}]" if isinstance(value, dict)
                    else f"key {printable(table)} outside any table")
            raise UserError(f"{where}: {what}; allowed tables: {', '.join(TABLES)}")


def table_items(table: str, raw, where: str) -> dict:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: {table} must be a table, got {show(raw)}; write its keys under [{table}]")
    return raw


def parse_run(raw: Mapping, tables, where: str, base: Path, default_cache: Path, keys=None) -> dict:
    """The run settings given in ``tables`` of ``raw``, checked; paths made absolute ("" is the default).
    ``keys`` maps each table to the settings it may hold (the daemon's RUN_KEYS unless given)."""
    keys = keys or RUN_KEYS
    values = {}
    for table in tables:
        allowed = keys[table]
        for key, value in table_items(table, raw.get(table, {}), where).items():
            if key not in allowed:
                if table in OWN_TABLES and key in {f.name for f in dataclasses.fields(OWN_TABLES[table])}:
                    continue
                raise UserError(f"{where}: unknown key [{table}] {printable(key)}; allowed: "
                                f"{', '.join(keys_of(table, keys))}")
            values[key] = convert(allowed[key], value, f"{where}: [{table}] {key}")
    for key in ("path", "init_from"):
        if key in values:
            values[key] = located(base, values[key])
    if "cache_dir" in values:
        values["cache_dir"] = located(base, values["cache_dir"]) or default_cache
    if "checkpoint_dir" in values:
        values["checkpoint_dir"] = located(base, values["checkpoint_dir"]) or BY_NAME["checkpoint_dir"].default
    return values


def parse_own(table: str, raw, where: str) -> dict:
    """The keys of one of the daemon's own tables, checked (paths still strings)."""
    fields = {f.name: f for f in dataclasses.fields(OWN_TABLES[table])}
    values = {}
    for key, value in table_items(table, raw, where).items():
        if key in RUN_KEYS[table]:  # [service] step_timeout is a run setting
            continue
        if key not in fields:
            raise UserError(f"{where}: unknown key [{table}] {printable(key)}; allowed: {', '.join(keys_of(table))}")
        s = next(d for d in declared(OWN_TABLES[table]) if d.name == key)
        values[key] = convert(s, value, f"{where}: [{table}] {key}")
    return values


def keys_of(table: str, keys=None) -> list:
    own = [f.name for f in dataclasses.fields(OWN_TABLES[table])] if table in OWN_TABLES else []
    return own + list((keys or RUN_KEYS)[table])


def located(base: Path, text: str) -> Path | None:
    """``text`` as an absolute path, relative ones taken from ``base``; None for ""."""
    return base / Path(text).expanduser() if text else None


def first_directory(environ: Mapping, name: str) -> Path | None:
    """systemd's StateDirectory= and RuntimeDirectory= may list several directories, ':'-separated."""
    text = environ.get(name, "").split(":")[0]
    return Path(text).absolute() if text else None


SYSTEM_SOCKET = Path("/run/cllm/control.sock")  # deploy/cllm.service's RuntimeDirectory=cllm


def default_socket(environ: Mapping = os.environ) -> Path:
    """The control socket when none is given, the same for `cllm serve` and `cllm ctl`: in systemd's
    RuntimeDirectory= when there is one, /run/cllm under systemd otherwise (INVOCATION_ID), else the
    user's own runtime directory ($XDG_RUNTIME_DIR/cllm), else /run/cllm."""
    runtime = first_directory(environ, "RUNTIME_DIRECTORY")
    if runtime:
        return runtime / "control.sock"
    user_runtime = environ.get("XDG_RUNTIME_DIR", "")
    if user_runtime and not environ.get("INVOCATION_ID"):
        return Path(user_runtime) / "cllm" / "control.sock"
    return SYSTEM_SOCKET


def check_combinations(c: ServiceConfig, where: str) -> None:
    """The checks that need more than one key, or the machine."""
    try:
        check(c.run, spell)
    except UserError as error:
        raise UserError(f"{where}: {error}") from None
    s = c.service
    if c.metrics.enabled:
        try:
            importlib.import_module("prometheus_client")  # the metrics extra
        except ImportError:
            raise UserError(f"{where}: [metrics] enabled = true needs prometheus_client, which is not installed; "
                            "pip install 'cllm[metrics]', or set enabled = false") from None
    if len(os.fsencode(s.socket)) > MAX_SOCKET_PATH:
        raise UserError(f"{where}: [service] socket {s.socket} is longer than a Unix socket path may be "
                        f"({MAX_SOCKET_PATH} bytes); set [service] socket to a shorter path")
    if s.socket_group:
        try:
            grp.getgrnam(s.socket_group)
        except KeyError:
            raise UserError(f'{where}: [service] socket_group "{s.socket_group}" is not a group on this machine; '
                            "create it (groupadd) or leave socket_group empty") from None

