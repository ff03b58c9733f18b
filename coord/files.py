"""Files that survive a crash at any instant and other processes working beside them.

A replacement is written to a scratch name, flushed, and renamed over the original. A
scratch file or directory carries its creator's pid and a random part, and is held under
an advisory lock (flock) for as long as it is in use: whoever starts later removes only
scratch that nobody holds, so a killed run's leftovers go away and a live run's stay.
"""

import ctypes
import errno
import fcntl
import os
import secrets
import shutil
import time
from pathlib import Path

STALE_AFTER = 10.0  # seconds: younger scratch may be a moment from being locked by its creator


def fsync_directory(path: Path) -> None:
    """Make the names in ``path`` (a rename, a new entry) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def scratch_name(stem: str) -> str:
    """``stem`` made unique to this process and call: ``<stem><pid>-<random>``."""
    return f"{stem}{os.getpid()}-{secrets.token_hex(4)}"


class Scratch:
    """A new scratch file or directory at ``path``, held under an exclusive lock until ``release``."""

    def __init__(self, path: Path, directory: bool = False):
        self.path = Path(path)
        if directory:
            self.path.mkdir()
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        else:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remove(self) -> None:
        """Delete the scratch (whatever it has become) and release it."""
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)
        self.release()


def remove_stale(parent: Path, pattern: str) -> list:
    """Delete the entries of ``parent`` matching ``pattern`` that no process holds; returns them."""
    removed = []
    for path in Path(parent).glob(pattern):
        try:
            if time.time() - path.lstat().st_mtime < STALE_AFTER:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone already, or a symlink: not scratch of ours
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


class Locked(Exception):
    """Another process holds the lock; ``holder`` is its pid as it wrote it (0 if unknown)."""

    def __init__(self, path: Path, holder: int):
        super().__init__(f"{path} is held by process {holder}")
        self.holder = holder


def hold_lock(path: Path) -> int:
    """Take the exclusive lock of the file ``path`` (created if missing) and write this process's pid
    in it; the returned descriptor holds the lock until it is closed or the process ends.
    Locked when another process holds it; OSError when the file cannot be made."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise Locked(path, int(text) if text.isdigit() else 0) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def discard(path: Path) -> None:
    """Delete the directory ``path``: first renamed to a scratch name, so no one ever sees it half deleted."""
    path = Path(path)
    doomed = path.with_name(scratch_name(f".{path.name}.tmp-"))
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


RENAME_EXCHANGE = 2  # renameat2(2) flag: swap two names atomically
AT_FDCWD = -100
LIBC = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one atomic step; False where the kernel or filesystem cannot."""
    renameat2 = getattr(LIBC, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def replace_directory(new: Path, final: Path) -> None:
    """Put the directory ``new`` at ``final``. An existing ``final`` is swapped out in the same atomic step
    and deleted only then, so a crash at any instant leaves a whole directory at ``final`` (where the
    filesystem cannot swap, there is an instant with none: readers then fall back to an older one)."""
    if not final.exists():
        os.rename(new, final)
    elif exchange(new, final):
        fsync_directory(final.parent)
        shutil.rmtree(new, ignore_errors=True)  # now the old one
        return
    else:
        discard(final)
        os.rename(new, final)
    fsync_directory(final.parent)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: a crash leaves the old file or the new one, never a mix."""
    path = Path(path)
    scratch = Scratch(path.with_name(scratch_name(f".{path.name}.tmp-")))
    try:
        with open(scratch.fd, "w", closefd=False) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(scratch.path, path)
        fsync_directory(path.parent)
    except BaseException:
        scratch.remove()
        raise
    scratch.release()
