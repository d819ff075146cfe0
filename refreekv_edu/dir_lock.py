"""One writer per output folder: a lock file that a second run finds taken, and says so.

``refreekv-edu demo --out X`` takes ``X/.refreekv.lock`` before it loads the model and releases it when its files
are written. A second run on the same folder meanwhile fails at once (:class:`FolderBusyError`, naming the
holder's pid and start time) instead of interleaving its files with the first run's. The lock is an OS file
lock (``fcntl.flock`` on Linux and macOS, ``msvcrt.locking`` on Windows), so a run that is killed releases it
with its process: no stale lock to clean up by hand. The file itself is removed on release.

Standard library only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The lock file's name inside the locked folder.
LOCK_NAME = ".refreekv.lock"


class FolderBusyError(ValueError):
    """Another process holds the folder's lock (the message names it and what to do)."""


def _try_lock(fd: int) -> bool:
    """Take the OS lock on ``fd`` without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "another process"
    except OSError:
        return "another process"


@contextmanager
def folder_lock(folder: str | Path, what: str = "run", hint: str = "wait for it to finish or pass another --out") -> Iterator[Path]:
    """Hold ``folder``'s lock for the ``with`` block; yields the lock file's path.

    Raises:
        FolderBusyError: another live process holds it (``"another demo is writing to X (pid 123, since ...)"``).
    """
    path = Path(folder) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            raise FolderBusyError(f"another {what} is writing to {Path(folder)} ({_holder(path)}); {hint}")
        try:  # the holder before us may have removed the file after we opened it: lock the file that is there
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, since {time.strftime('%H:%M:%S')}".encode())
        yield path
    finally:
        try:
            path.unlink()  # while still locked: a process that opened the old file retries on the new one
        except OSError:
            pass
        os.close(fd)  # releases the lock
