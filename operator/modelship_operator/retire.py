"""Which model versions' Deployments outlive the pass that moved traffic off them.

Promotion retargets Service NAME from the old version; a rollback, an abort or a
replaced canary takes the canary's weight to 0. kube-proxy, ingress controllers and
gateways learn of such a change seconds later and keep sending requests meanwhile, so
the Deployment that answered them must not go in the same pass: it is kept for
``retire_after_seconds`` and deleted by the first pass after that. The memory is
``status.retiring`` (``[{version, since}]``), so a restarted operator still deletes it
on time. Pure: the caller passes the clock and what is live.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    """A version traffic has left, and when (epoch seconds, whole)."""

    version: str
    since: float


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def _epoch(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read(raw: Any) -> list[Entry]:
    """Entries of ``status.retiring``; an entry that cannot be read is dropped (its
    Deployment is then deleted, as it would have been before this memory existed)."""
    entries: list[Entry] = []
    for item in raw if isinstance(raw, list) else []:
        try:
            entries.append(Entry(str(item["version"]), _epoch(str(item["since"]))))
        except (KeyError, TypeError, ValueError):
            continue
    return entries


def plan(
    previous: Iterable[Entry],
    before: Iterable[str],
    after: Iterable[str],
    alive: Callable[[str], bool],
    now: float,
    keep_seconds: float,
) -> list[Entry]:
    """The versions to keep this pass: those served `before` it and not `after` (from
    `now`), and the `previous` ones, while their Deployment is `alive`, not served
    again, and younger than `keep_seconds`. `since` is rounded up to the second it is
    stored with, so a version is never kept for less than `keep_seconds`."""
    serving = set(after)
    since = {entry.version: entry.since for entry in previous}
    for version in set(before) - serving:
        since.setdefault(version, float(math.ceil(now)))
    kept = [
        Entry(version, started)
        for version, started in since.items()
        if version not in serving and alive(version) and now < started + keep_seconds
    ]
    return sorted(kept, key=lambda e: (e.since, e.version)) if keep_seconds > 0 else []


def to_status(entries: Iterable[Entry]) -> list[dict[str, str]] | None:
    """``status.retiring`` for `entries`; None (the key is removed) when there are none."""
    out = [{"version": entry.version, "since": _iso(entry.since)} for entry in entries]
    return out or None
