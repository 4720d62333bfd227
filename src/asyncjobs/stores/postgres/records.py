"""Changes of :class:`~.store.PostgresStore` written as patches.

A change is written as a patch: the fields that differ between the snapshot a step
started from and the one it made, merged into the stored record (``record || patch``)
by a write fenced on the version the patch was computed from. The server then builds
the event's payload from the merged record, so the client never encodes a whole job
for a change. Whole records come from :func:`asyncjobs.codec.job_to_record`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs

from ...codec import RECORD_FIELDS
from ...job import Job

__all__ = ["patch_of"]

_NAMES: Final = tuple(a.name for a in attrs.fields(Job))


def _make_patcher() -> Callable[[Job, Job], dict[str, Any]]:
    """Build ``patch_of``: one comparison per field, straight-line (a loop over the
    fields with ``getattr`` cost more than the rest of writing a change)."""
    lines = ["def patch_of(before, after):", "    patch = {}"]
    for name in _NAMES:
        lines += [
            f"    new = after.{name}",
            f"    if new is not before.{name} and new != before.{name}:",
            f"        patch[{name!r}] = _encode[{name!r}](new)",
        ]
    lines += ["    return patch"]
    namespace: dict[str, Any] = {"_encode": RECORD_FIELDS}
    exec("\n".join(lines), namespace)  # the source is built from field names only
    patcher: Callable[[Job, Job], dict[str, Any]] = namespace["patch_of"]
    patcher.__doc__ = "The fields of ``after`` that differ from ``before``, as record JSON."
    return patcher


patch_of: Final = _make_patcher()
