"""The local spool: decision events that could not reach Redis wait here, on disk.

Each process appends to a file of its own (``decisions-<pid>-<start>.jsonl``) and holds
an exclusive ``flock`` on it while alive, so a file whose lock can be taken belongs to a
process that is gone and may be replayed by anyone. Lines are flushed and fsynced before
``append`` returns: an event in the spool survives a crash of the gateway.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from gateway.store.events import DecisionEvent

log = logging.getLogger("antidistill.store")


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        name = f"decisions-{os.getpid()}-{time.time_ns()}.jsonl"
        self.path = directory / name
        # Created under a name that orphans() ignores and renamed once locked: otherwise
        # another process could take the new, still unlocked file for an orphan and delete it.
        creating = directory / f".{name}.new"
        self._handle: IO[bytes] = open(creating, "ab")  # noqa: SIM115 - held for the process life
        fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(creating, self.path)
        self._pending = 0

    @property
    def pending(self) -> int:
        """Events this process has spooled and not yet replayed."""
        return self._pending

    def append(self, events: Sequence[DecisionEvent]) -> None:
        self._handle.write(b"".join(e.to_json() + b"\n" for e in events))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._pending += len(events)

    def own_events(self) -> list[DecisionEvent]:
        self._handle.flush()
        with open(self.path, "rb") as handle:
            return list(_read(self.path, handle))

    def clear_own(self) -> None:
        """Forget this process's spooled events (after they reached Redis)."""
        self._handle.truncate(0)
        self._handle.seek(0)
        os.fsync(self._handle.fileno())
        self._pending = 0

    def orphans(self) -> Iterator[tuple[Path, list[DecisionEvent], IO[bytes]]]:
        """Spool files of processes that are gone, each locked while the caller replays it.

        The caller deletes the file (``path.unlink()``) once its events are stored; the lock
        is released when the handle is closed after the caller moves on.
        """
        for path in sorted(self.directory.glob("decisions-*.jsonl")):
            if path == self.path:
                continue
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            if os.fstat(handle.fileno()).st_nlink == 0:
                handle.close()  # replayed and deleted by another process while we waited
                continue
            try:
                yield path, list(_read(path, handle)), handle
            finally:
                handle.close()

    def close(self) -> None:
        """Close this process's file; an empty one is removed."""
        empty = self._handle.tell() == 0
        self._handle.close()
        if empty:
            self.path.unlink(missing_ok=True)


def _read(path: Path, handle: IO[bytes]) -> Iterator[DecisionEvent]:
    for number, line in enumerate(handle, start=1):
        # A line without its newline was cut by a crash before append() returned,
        # so no caller was ever told it was stored: skip it.
        if not line.endswith(b"\n") or not line.strip():
            continue
        try:
            event = DecisionEvent.from_json(line)
        except (ValueError, TypeError, AttributeError) as exc:
            # A damaged line must not block the file's other events (nor the writer).
            log.error("spool: skipping unreadable event at %s:%d: %s", path, number, exc)
            continue
        yield event
