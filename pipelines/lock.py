"""One trainer per cell: an exclusive lock on ``<cell>/LOCK`` while a cell trains or evaluates.

The lock is ``fcntl.flock`` on the file, so the kernel drops it when its owner dies, however it
dies (``kill -9`` included): a lock can never be left held by a dead process. The file also
names its owner (host, pid, start time) while held and is emptied on a clean release, so a
non-empty file found by a new owner is the trace of an owner that died without releasing: it is
taken over with a log line naming the dead owner. Locks are per host for local file systems; on
a cluster the run store must be on a file system whose locks span nodes (NFSv4, Lustre, GPFS).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

LOCK = "LOCK"


class CellBusy(RuntimeError):
    """Another live process holds the cell's lock (the message names it)."""


def _owner_text(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors="replace").strip()


def describe(owner: str) -> str:
    """'pid 123 on host h since 2026-01-01T00:00:00Z' from the lock file's text."""
    try:
        o = json.loads(owner)
        return f"pid {o['pid']} on host {o['host']} since {o['since']}"
    except (ValueError, KeyError, TypeError):
        return repr(owner) if owner else "an unknown process"


@contextmanager
def cell_lock(cell: Path, wait: bool = True) -> Iterator[None]:
    """Hold the cell's lock for the block. ``wait``: block while another process holds it (a
    grid driver rejoining a cell a stopped driver left running); otherwise raise CellBusy."""
    cell = Path(cell)
    cell.mkdir(parents=True, exist_ok=True)
    fd = os.open(cell / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = describe(_owner_text(fd))
            if not wait:
                raise CellBusy(f"{cell}: is being trained by {owner}; wait for it to end "
                               f"(it then reads as finished) or stop that process") from None
            log.info("%s: is being trained by %s: waiting for it", cell.name, owner)
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("%s: lock released by %s: continuing", cell.name, owner)
        stale = _owner_text(fd)
        if stale:
            log.warning("%s: taking over the lock of %s, which ended without releasing it", cell.name,
                        describe(stale))
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)   # an empty file: released cleanly
    finally:
        os.close(fd)   # closing drops the flock


def holder(cell: Path) -> str | None:
    """Who holds the cell's lock now (describe()), or None if nobody does."""
    path = Path(cell) / LOCK
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return describe(_owner_text(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
