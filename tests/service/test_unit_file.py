"""deploy/cllm.service and its MPI drop-in: the directives the daemon relies on, systemd's own check, and why W^X
stays off."""

import ctypes.util
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cllm.coord.training.config import RunConfig

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "cllm.service"
MPI_DROP_IN = UNIT.parent / "cllm.service.d" / "mpi.conf"


def directives(*texts: str) -> dict:
    """{section: {key: [values]}} of a unit and its drop-ins, read in turn, as systemd reads them: a list setting
    (Exec*=, Environment=) may repeat, so configparser will not do, and an empty value clears it (ExecStart= in a
    drop-in); any other setting takes its last value."""
    sections = {}
    for text in texts:
        current = None
        for line in text.splitlines():
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), {})
                continue
            key, _, value = line.partition("=")
            key, value = key.strip(), value.strip()
            listed = key.startswith(("Exec", "Environment"))
            current[key] = (current.get(key, []) + [value] if value else []) if listed else [value]
    return sections


def mpi_unit() -> dict:
    return directives(UNIT.read_text(), MPI_DROP_IN.read_text())


REQUIRED = {
    "Type": "notify", "NotifyAccess": "main", "ExecStart": "/usr/local/bin/cllm serve --config /etc/cllm/cllm.toml",
    "ExecReload": "/bin/kill -HUP $MAINPID", "Restart": "on-failure", "KillSignal": "SIGTERM",
    "RestartPreventExitStatus": "2",  # a configuration it cannot start with: a restart cannot fix it
    "StateDirectory": "cllm", "RuntimeDirectory": "cllm", "RuntimeDirectoryMode": "0750", "UMask": "0027",
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": "@system-service", "SystemCallErrorNumber": "EPERM", "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
    "LockPersonality": "yes", "RestrictRealtime": "yes", "MemoryDenyWriteExecute": "no", "SyslogIdentifier": "cllm",
}


def test_unit_has_the_directives_the_daemon_relies_on():
    unit = directives(UNIT.read_text())
    service = unit["Service"]
    for key, value in REQUIRED.items():
        assert service.get(key) == [value], key
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert service.get("DynamicUser") == ["yes"] or service.get("User"), "the service needs its own user"
    for key in ("WatchdogSec", "RestartSec", "TimeoutStopSec"):
        assert len(service.get(key, [])) == 1 and float(service[key][0]) > 0, key


# what the MPI drop-in changes: mpiexec starts the ranks, rank 0 notifies, a reload is a control request
MPI_REQUIRED = {
    "NotifyAccess": "all", "KillMode": "mixed",
    "ExecStart": "/usr/local/bin/mpiexec -n 2 /usr/local/bin/cllm serve --config /etc/cllm/cllm.toml",
    "ExecReload": "/usr/local/bin/cllm ctl reload --config /etc/cllm/cllm.toml",
}


def test_the_mpi_drop_in_starts_mpiexec_and_reloads_through_rank_0():
    service = mpi_unit()["Service"]
    for key, value in {**REQUIRED, **MPI_REQUIRED}.items():
        assert service.get(key) == [value], key
    # what the commands ask of cllm is what its command line takes
    from cllm.coord.cli.main import build_parser
    serve = build_parser().parse_args(shlex.split(service["ExecStart"][0])[4:])
    reload = build_parser().parse_args(shlex.split(service["ExecReload"][0])[1:])
    assert (serve.command, reload.command, reload.config) == ("serve", "reload", serve.config)
    # a reload waits for the step boundary, at most a step
    assert float(service["TimeoutStartSec"][0]) > RunConfig().step_timeout


def test_numba_cache_is_in_the_writable_state_directory():
    service = directives(UNIT.read_text())["Service"]
    environment = dict(item.split("=", 1) for line in service["Environment"] for item in shlex.split(line))
    assert environment["PYTHONUNBUFFERED"] == "1"
    state_dir = Path("/var/lib") / service["StateDirectory"][0]
    assert state_dir in Path(environment["NUMBA_CACHE_DIR"]).parents  # ProtectSystem=strict: all else read-only


def test_systemd_waits_out_a_slow_step_before_killing():
    service = directives(UNIT.read_text())["Service"]
    step_timeout = RunConfig().step_timeout
    # a step that times out is retried once before the run fails: only a wedged process may meet the watchdog
    assert float(service["WatchdogSec"][0]) > 2 * step_timeout
    # a stop finishes the step in flight, then writes a checkpoint
    assert float(service["TimeoutStopSec"][0]) > step_timeout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("drop_in", [False, True])
def test_systemd_analyze_verifies_the_unit(tmp_path, drop_in):
    cllm = shutil.which("cllm")
    command = f"{cllm}" if cllm else f"{sys.executable} -m cllm.coord"
    (tmp_path / "cllm.service").write_text(UNIT.read_text().replace("/usr/local/bin/cllm", command))
    if drop_in:  # verify reads cllm.service.d/ beside the unit
        from ..distributed.mpirun import mpiexec_path
        text = MPI_DROP_IN.read_text().replace("/usr/local/bin/mpiexec", mpiexec_path())
        (tmp_path / "cllm.service.d").mkdir()
        (tmp_path / "cllm.service.d" / "mpi.conf").write_text(text.replace("/usr/local/bin/cllm", command))
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "cllm.service")], capture_output=True,
                         text=True, timeout=60)
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if "cllm.service" in line]
    assert out.returncode == 0 and not complaints, out.stdout + out.stderr


# What systemd installs for MemoryDenyWriteExecute=yes on x86-64: mmap asking for PROT_WRITE|PROT_EXEC,
# and mprotect/pkey_mprotect asking for PROT_EXEC, fail with EPERM. The filter survives exec.
DENY_WRITE_EXECUTE = """
import ctypes, errno, os, sys
lib = ctypes.CDLL(sys.argv[1])
lib.seccomp_init.restype = ctypes.c_void_p
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
ctx = ctypes.c_void_p(lib.seccomp_init(ctypes.c_uint32(0x7FFF0000)))  # allow the rest
for name, mask in (("mmap", 0x6), ("mprotect", 0x4), ("pkey_mprotect", 0x4)):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    rule = Cmp(2, 7, mask, mask)  # the third argument (prot) masked with `mask` equals `mask`
    assert lib.seccomp_rule_add_array(ctx, ctypes.c_uint32(0x00050000 | errno.EPERM), nr, 1, ctypes.byref(rule)) == 0
assert lib.seccomp_load(ctx) == 0
os.execv(sys.executable, [sys.executable, "-c", "import numba"])
"""


@pytest.mark.skipif(ctypes.util.find_library("seccomp") is None or not sys.platform.startswith("linux"),
                    reason="needs libseccomp on Linux")
def test_numba_cannot_run_under_memory_deny_write_execute():
    """Why the unit sets MemoryDenyWriteExecute=no: llvmlite's JIT needs memory it writes, then executes."""
    out = subprocess.run([sys.executable, "-c", DENY_WRITE_EXECUTE, ctypes.util.find_library("seccomp")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "cannot allocate executable memory" in out.stderr, out.stderr
