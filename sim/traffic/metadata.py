"""Edge metadata for synthetic clients: client IPs, JA4 TLS fingerprints, org ids.

Benign clients mostly have their own IPs and orgs, but share the handful of JA4 strings
that common SDKs and browsers produce (as real ones do); a company's developers share an
office /24 and an org id. A hydra network's accounts come from a few /24 ranges and often
share one unusual fingerprint, each account under its own org id.
"""

from __future__ import annotations

import numpy as np

from sim.traffic.client import Identity

Rng = np.random.Generator

COMMON_JA4 = (
    "t13d1516h2_8daaf6152771_02713d6af862",  # browser-like
    "t13d1517h2_8daaf6152771_b0da82dd1658",
    "t13d1715h2_5b57614c22b0_3d5424432f57",  # python httpx / openai SDK
    "t13d1812h1_85036bcba153_b26ce05bbdd6",  # python requests
    "t13d1713h2_5b57614c22b0_748f4c70de1c",  # node fetch
    "t13d1011h2_f57a46bbacb6_ab7e3b40a677",  # go net/http
    "t13d1310h2_e8a523a41297_ef7df7f74e48",  # curl
)
_JA4_WEIGHTS = np.array([20, 10, 30, 10, 15, 8, 4], dtype=np.float64)


def _hex(rng: Rng, n: int) -> str:
    return rng.bytes((n + 1) // 2).hex()[:n]


def client_id(rng: Rng) -> str:
    """A 64-hex id, shaped like the gateway's HMAC of an API key."""
    return _hex(rng, 64)


def subnet(rng: Rng) -> str:
    """A random public-looking /24 prefix ("a.b.c")."""
    a = int(rng.choice([23, 34, 45, 52, 66, 73, 81, 91, 103, 109, 141, 176, 185, 188, 203]))
    return f"{a}.{int(rng.integers(0, 256))}.{int(rng.integers(0, 256))}"


def ip_in(rng: Rng, prefix: str) -> str:
    return f"{prefix}.{int(rng.integers(2, 255))}"


def common_ja4(rng: Rng) -> str:
    return COMMON_JA4[int(rng.choice(len(COMMON_JA4), p=_JA4_WEIGHTS / _JA4_WEIGHTS.sum()))]


def custom_ja4(rng: Rng) -> str:
    """An unusual fingerprint (a custom TLS stack), as a harvesting toolkit might have."""
    ciphers, extensions = int(rng.integers(10, 30)), int(rng.integers(10, 20))
    return f"t13d{ciphers}{extensions}h2_{_hex(rng, 12)}_{_hex(rng, 12)}"


def org_id(rng: Rng) -> str:
    return f"org-{_hex(rng, 16)}"


def individual(rng: Rng, rpm: int, mobile: bool = False) -> Identity:
    """A client on its own: one IP (a few for mobile users), a common fingerprint."""
    prefix = subnet(rng)
    ips = [ip_in(rng, prefix)]
    if mobile:
        ips += [ip_in(rng, subnet(rng)) for _ in range(int(rng.integers(0, 3)))]
    return Identity(tuple(ips), common_ja4(rng), org_id(rng), rpm)


def team(rng: Rng, size: int, rpm: int, shared_stack: bool = False) -> list[Identity]:
    """Colleagues: one office /24, one org id; a common fingerprint each, or (CI machines
    of one team) one shared uncommon fingerprint: a benign look-alike of a hydra network."""
    prefix, org = subnet(rng), org_id(rng)
    shared = custom_ja4(rng) if shared_stack else None
    return [
        Identity((ip_in(rng, prefix),), shared or common_ja4(rng), org, rpm) for _ in range(size)
    ]


def network(rng: Rng, size: int, rpm: int) -> list[Identity]:
    """A hydra network: accounts spread over 1 to 3 /24 ranges, usually one shared fingerprint."""
    prefixes = [subnet(rng) for _ in range(int(rng.integers(1, 4)))]
    shared = custom_ja4(rng) if rng.random() < 0.7 else common_ja4(rng)
    out = []
    for _ in range(size):
        prefix = prefixes[int(rng.integers(len(prefixes)))]
        ja4 = shared if rng.random() < 0.9 else common_ja4(rng)
        out.append(Identity((ip_in(rng, prefix),), ja4, org_id(rng), rpm))
    return out
