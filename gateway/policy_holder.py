"""The running policy and its hot reload (file watch and SIGHUP).

A reload that fails validation keeps the running policy and logs every ``file:line``
problem; the gateway never runs on a half-valid policy.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gateway.metrics import Metrics
from gateway.policy import Policy
from gateway.policy_file import PolicyError, load_policy

log = logging.getLogger("antidistill.policy")


class PolicyHolder:
    def __init__(self, path: Path | None, metrics: Metrics) -> None:
        self.path = path
        self._metrics = metrics
        self.current = load_policy(path) if path is not None else Policy()
        self._seen = self._stat()

    def get(self) -> Policy:
        return self.current

    def _stat(self) -> tuple[int, int, int] | None:
        """What identifies a version of the file: modification time alone misses a rewrite
        within one timestamp tick, or by a tool that keeps the old time."""
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def reload(self) -> bool:
        """Load the file again; True if the new policy is now running."""
        if self.path is None:
            return False
        self._seen = self._stat()
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            self._metrics.policy_reloads.labels(result="invalid").inc()
            log.error(
                "policy reload refused; keeping the running policy",
                extra={"problems": [str(i) for i in exc.issues]},
            )
            return False
        fixed = _fixed_at_start(self.current, policy)
        if fixed:
            log.warning(
                "policy reloaded, but these settings only take effect on restart",
                extra={"settings": fixed},
            )
        self.current = policy
        self._metrics.policy_reloads.labels(result="ok").inc()
        log.info("policy reloaded", extra={"path": str(self.path)})
        return True

    async def watch(self, interval_s: float) -> None:
        """Reload whenever the file changes (time, size or inode)."""
        while True:
            await asyncio.sleep(interval_s)
            if self._stat() != self._seen:
                self.reload()


def _fixed_at_start(old: Policy, new: Policy) -> list[str]:
    """Settings that differ between two policies but are read once, when the gateway starts."""
    changed = []
    if old.store.key_prefix != new.store.key_prefix:
        changed.append("store.key_prefix")
    if old.store.retention.max_events != new.store.retention.max_events:
        changed.append("store.retention.max_events")
    if old.upstream != new.upstream:
        changed.append("upstream")
    return changed
