"""Provenance marks: evidence, kept by the gateway, that a suspect model learned from a client.

Two kinds: DAWN-style keyed answers on probability endpoints (:mod:`.dawn`) and a keyed
lexical watermark on generated text (:mod:`.text`). Both are keyed by one secret derived
from the gateway's key secret with :func:`provenance_key`, and by the client id, so marks
given to one client say nothing about another.
"""

from __future__ import annotations

import hashlib
import hmac


def provenance_key(secret: bytes) -> bytes:
    """The 32-byte provenance key derived from the gateway's key secret.

    ``create_app`` and the ``antidistill provenance`` commands must derive it the same way,
    or marks made by the gateway cannot be verified.
    """
    return hmac.new(secret, b"antidistill-provenance", hashlib.sha256).digest()
