"""The local spool: durable appends, a file per process, orphan files of stopped processes."""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.store.events import DecisionEvent
from gateway.store.spool import Spool


def _event(n: int, **fields: Any) -> DecisionEvent:
    base: dict[str, Any] = {
        "ts": 1_700_000_000_000 + n,
        "id": f"e{n}",
        "client": "c1",
        "route": "/v1/chat/completions",
        "decision": "admitted",
        "status": 200,
    }
    return DecisionEvent(**{**base, **fields})


def _ids(events: list[DecisionEvent]) -> list[str]:
    return [e.id for e in events]


def test_append_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    try:
        full = _event(1, reasons=("store_unavailable", "x"), params={"n": 2}, prompt_tokens=None)
        spool.append([full, _event(2)])
        assert spool.pending == 2
        # Another reader (another process, after a crash) sees whole lines already.
        lines = spool.path.read_bytes().splitlines(keepends=True)
        assert len(lines) == 2 and all(line.endswith(b"\n") for line in lines)
        assert DecisionEvent.from_json(lines[0]) == full
        spool.append([_event(3)])
        assert spool.pending == 3
        assert _ids(spool.own_events()) == ["e1", "e2", "e3"]
        assert spool.path.name.startswith("decisions-") and spool.path.suffix == ".jsonl"
    finally:
        spool.close()


def test_clear_own_then_append_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([_event(1), _event(2)])
    spool.clear_own()
    assert spool.pending == 0
    assert spool.own_events() == []
    assert spool.path.stat().st_size == 0
    spool.append([_event(3)])
    assert _ids(spool.own_events()) == ["e3"]
    assert spool.path.read_bytes().count(b"\n") == 1  # written at the start, not after a gap
    spool.clear_own()
    spool.close()
    assert not spool.path.exists()  # an empty file is removed on close


def test_close_keeps_a_file_with_events(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([_event(1)])
    spool.close()
    assert spool.path.exists()


def test_a_live_spool_is_not_an_orphan(tmp_path: Path) -> None:
    live = Spool(tmp_path)
    other = Spool(tmp_path)  # same process, own file: flock locks are per open file
    try:
        live.append([_event(1)])
        assert list(other.orphans()) == []
        assert list(live.orphans()) == []  # its own file is not offered to itself either
    finally:
        live.close()
        other.close()


def test_orphan_is_offered_once_and_locked_while_replayed(tmp_path: Path) -> None:
    gone = Spool(tmp_path)
    gone.append([_event(1), _event(2)])
    gone.close()
    first, second = Spool(tmp_path), Spool(tmp_path)
    try:
        found: list[list[str]] = []
        for path, events, handle in first.orphans():
            assert path == gone.path
            found.append(_ids(events))
            assert not handle.closed
            # While one process replays a file, nobody else gets it.
            assert list(second.orphans()) == []
            path.unlink()  # the caller deletes a file once its events are stored
        assert found == [["e1", "e2"]]
        assert list(first.orphans()) == []
        assert list(second.orphans()) == []
    finally:
        first.close()
        second.close()


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    orphan = tmp_path / "decisions-1-1.jsonl"
    orphan.write_bytes(_event(1).to_json() + b"\n" + _event(2).to_json() + b"\n" + b'{"ts": 17000')
    spool = Spool(tmp_path)
    try:
        [(path, events, _)] = list(spool.orphans())
        assert path == orphan
        assert _ids(events) == ["e1", "e2"]
    finally:
        spool.close()


def test_corrupt_line_is_skipped_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One damaged line must not make a whole file (or the writer replaying it) unusable."""
    orphan = tmp_path / "decisions-1-1.jsonl"
    orphan.write_bytes(_event(1).to_json() + b"\n" + b"\x00garbage\n" + _event(3).to_json() + b"\n")
    spool = Spool(tmp_path)
    try:
        with caplog.at_level(logging.ERROR, logger="antidistill.store"):
            [(_, events, _)] = list(spool.orphans())
        assert _ids(events) == ["e1", "e3"]
        assert any(str(orphan) in r.getMessage() and ":2" in r.getMessage() for r in caplog.records)
    finally:
        spool.close()


def test_new_spool_file_is_never_seen_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process scanning for orphans while this one creates its file must not take
    it (it would replay and delete a live process's file, whose later events are lost)."""
    scanner = Spool(tmp_path)
    real_flock = fcntl.flock
    seen: list[Path] = []
    scanning = False

    def flock_after_a_scan(handle: Any, operation: int) -> None:
        nonlocal scanning
        if not scanning:  # the moment between the new file's creation and its lock
            scanning = True
            for path, _events, _ in scanner.orphans():
                seen.append(path)
                path.unlink()
        real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_scan)
    new = Spool(tmp_path)
    monkeypatch.setattr(fcntl, "flock", real_flock)
    try:
        assert seen == []
        new.append([_event(1)])
        assert new.path.exists()
        assert _ids(new.own_events()) == ["e1"]
    finally:
        new.close()
        scanner.close()


def test_orphan_deleted_while_waiting_for_its_lock_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process replayed and deleted the file between our open() and our flock():
    replaying it again would store its events twice."""
    gone = Spool(tmp_path)
    gone.append([_event(1)])
    gone.close()
    spool = Spool(tmp_path)
    real_flock = fcntl.flock

    def flock_after_another_replay(handle: Any, operation: int) -> None:
        if getattr(handle, "name", None) == str(gone.path) and gone.path.exists():
            gone.path.unlink()
        real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_another_replay)
    try:
        assert list(spool.orphans()) == []
    finally:
        monkeypatch.setattr(fcntl, "flock", real_flock)
        spool.close()
