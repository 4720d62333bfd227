"""ULIDs: 26-character, lexicographically sortable ids (48-bit ms time + 80 random bits).

Ids made in one process are strictly increasing even within one millisecond (the random
part is incremented), so ordering by id is FIFO order of submission.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32


def _encode(value: int) -> str:
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


class UlidGenerator:
    """A monotonic ULID source; thread-safe."""

    __slots__ = ("_last_ms", "_last_rand", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def new(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                ms = self._last_ms
                rand = self._last_rand + 1
                if rand >= 1 << 80:  # 2**80 ids in one ms: move to the next ms
                    ms += 1
                    rand = int.from_bytes(os.urandom(10), "big") >> 1
            else:
                # One bit of headroom so the increment above practically never overflows.
                rand = int.from_bytes(os.urandom(10), "big") >> 1
            self._last_ms, self._last_rand = ms, rand
        return _encode((ms << 80) | rand)


_default = UlidGenerator()


def new_ulid() -> str:
    """Return a new ULID string."""
    return _default.new()
