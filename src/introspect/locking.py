"""A run directory is worked on by one process at a time: `with locked(run_dir): ...`.

The lock is an OS file lock (fcntl.flock) on RUN/.lock, so it is released when the process dies, even by SIGKILL;
the file names the holder (pid, host, command, start time) for the error a second process gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError

LOCK = ".lock"


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    from .devices import secondary

    run_dir.mkdir(parents=True, exist_ok=True)
    if secondary():  # under `accelerate launch` the main process holds the lock for the whole launch
        yield
        return
    path = run_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown"
            raise UserError(f"run directory {run_dir} is in use by another introspect process ({holder}); wait for it "
                            f"to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%F %T"),
                                 "command": " ".join(sys.argv[:3])}).encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
