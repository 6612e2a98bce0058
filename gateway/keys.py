"""Redis key layout.

Every key of one client carries the hash tag ``{c:<client_id>}`` so that all of a client's
state lives in one Redis Cluster slot and one Lua call can touch it atomically.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Builds every Redis key the gateway uses from one configurable prefix."""

    prefix: str = "antidistill"

    def client_tag(self, client_id: str) -> str:
        return f"{self.prefix}:{{c:{client_id}}}"

    def limit(self, client_id: str, name: str) -> str:
        """GCRA theoretical-arrival-time key of one of a client's limits."""
        return f"{self.client_tag(client_id)}:gcra:{name}"

    def scoped_limit(self, scope: str, scope_id: str, name: str) -> str:
        """GCRA key of a shared limit (``scope`` is ``tier`` or ``global``)."""
        return f"{self.prefix}:{{{scope}:{scope_id}}}:gcra:{name}"

    def inflight(self, client_id: str) -> str:
        """Sorted set of a client's in-flight request leases, scored by expiry (ms)."""
        return f"{self.client_tag(client_id)}:inflight"

    def level(self, client_id: str) -> str:
        """Hash with the client's enforcement level, reason codes and expiry."""
        return f"{self.client_tag(client_id)}:level"

    def summary(self, client_id: str) -> str:
        """Per-client summary hash of the decision log."""
        return f"{self.client_tag(client_id)}:summary"

    def bias_tokens(self, client_id: str, window: int) -> str:
        """Set of distinct token ids a client biased in one fixed time window."""
        return f"{self.client_tag(client_id)}:bias:{window}"

    def provenance(self, client_id: str) -> str:
        """List of the provenance marks (DAWN answers) given to a client, oldest first."""
        return f"{self.client_tag(client_id)}:provenance"

    def detector(self, client_id: str) -> str:
        """Hash with the client's latest detector result (score, level, reasons, explain …)."""
        return f"{self.client_tag(client_id)}:detector"

    def score_history(self, client_id: str) -> str:
        """List of the client's detector scores over time: ``"<ts_ms> <score> <level>"``."""
        return f"{self.client_tag(client_id)}:scores"

    @property
    def flagged(self) -> str:
        """Sorted set of clients the detector holds at ``watch`` or above, by latest score."""
        return f"{self.prefix}:flagged"

    @property
    def campaigns(self) -> str:
        """Hash of linked campaigns: campaign id → JSON (members, links, score, reasons, ts)."""
        return f"{self.prefix}:campaigns"

    @property
    def audit(self) -> str:
        """Stream of actions on clients, by operators and by the detector (the audit trail)."""
        return f"{self.prefix}:audit"

    @property
    def labels(self) -> str:
        """Hash of operator labels: client id → ``harvesting`` or ``benign``."""
        return f"{self.prefix}:labels"

    @property
    def shadow_levels(self) -> str:
        """Hash of the levels the detector would set in shadow mode: client id → JSON."""
        return f"{self.prefix}:shadow_levels"

    @property
    def detector_stats(self) -> str:
        """Hash of each detector worker's latest counters: consumer name → JSON."""
        return f"{self.prefix}:detector:stats"

    @property
    def decisions(self) -> str:
        """The decision-log stream."""
        return f"{self.prefix}:decisions"

    @property
    def clients(self) -> str:
        """Sorted set of client ids, scored by last-seen time (ms)."""
        return f"{self.prefix}:clients"
