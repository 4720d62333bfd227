"""ULIDs: 26-character, lexicographically sortable ids (48-bit ms time + 80 random bits).

Ids made in one process are strictly increasing even within one millisecond (the random
part is incremented), so ordering by id is FIFO order of submission.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
# Two characters per lookup: encoding is on every submit's path, and a loop of 26
# divmods cost more than the rest of building the id.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


def _encode_time(ms: int, p: tuple[str, ...] = _PAIRS) -> str:
    """The first 10 characters: the 48-bit time (50 bits, two of them leading zeros)."""
    return (
        p[ms >> 40]
        + p[(ms >> 30) & 1023]
        + p[(ms >> 20) & 1023]
        + p[(ms >> 10) & 1023]
        + p[ms & 1023]
    )


def _encode_rand(rand: int, p: tuple[str, ...] = _PAIRS) -> str:
    """The last 16 characters: the 80 random bits."""
    return (
        p[rand >> 70]
        + p[(rand >> 60) & 1023]
        + p[(rand >> 50) & 1023]
        + p[(rand >> 40) & 1023]
        + p[(rand >> 30) & 1023]
        + p[(rand >> 20) & 1023]
        + p[(rand >> 10) & 1023]
        + p[rand & 1023]
    )


def _encode(value: int) -> str:
    """A 128-bit value as 26 characters (the time part first)."""
    return _encode_time(value >> 80) + _encode_rand(value & ((1 << 80) - 1))


class UlidGenerator:
    """A monotonic ULID source; thread-safe."""

    __slots__ = ("_last_ms", "_last_rand", "_lock", "_time_text")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0
        self._time_text = ""

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
            if ms != self._last_ms:
                self._time_text = _encode_time(ms)
            self._last_ms, self._last_rand = ms, rand
            return self._time_text + _encode_rand(rand)


_default = UlidGenerator()


def new_ulid() -> str:
    """Return a new ULID string."""
    return _default.new()
