"""One loop per ModelDeployment: the only place its passes run and its writes come from.

kopf starts :func:`run` as an async daemon for every ModelDeployment and stops it when
the object goes. The loop sleeps until something it depends on changes, then runs one
pass (reconcile.Reconciler.run) in a worker thread:

- the ModelDeployment changed (spec, annotations, or a status someone else wrote), or one
  of its children did (a watch event: created, edited by hand, deleted, its pods turned
  ready): :class:`Wakers` wakes the loop within the event's own delivery time;
- time is the input: a rollout step (``rollout_tick_seconds`` while a canary runs or a
  version retires), the next alias poll the resolver scheduled, a retry after an error;
- and a slow safety pass (``resync_interval_seconds``) that reads only the caches.

Passes of one ModelDeployment therefore never overlap, and a quiet ModelDeployment
costs no request: everything a pass reads comes from the watch-fed caches (cache.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from modelship_operator import cache
from modelship_operator.naming import label_value
from modelship_operator.reconcile import PassResult, Reconciler

SETTLE_SECONDS = 0.05
"""After a wake-up, how long to let a burst of related events arrive (one pass for all)."""


class Wakers:
    """The wake-up flag of every running loop, by (namespace, name), and the children
    whose deletion the watch reported since the loop last looked. Event loop only."""

    def __init__(self) -> None:
        self._flags: dict[tuple[str, str], asyncio.Event] = {}
        self._deleted: dict[tuple[str, str], set[cache.Key]] = {}

    def register(self, namespace: str, name: str) -> asyncio.Event:
        return self._flags.setdefault((namespace, name), asyncio.Event())

    def forget(self, namespace: str, name: str, flag: asyncio.Event) -> None:
        if self._flags.get((namespace, name)) is flag:
            del self._flags[(namespace, name)]
            self._deleted.pop((namespace, name), None)

    def child_deleted(self, namespace: str, name: str, key: cache.Key) -> None:
        """The watch saw a child of this loop's object go: wake it, and let its overlay
        drop what it applied under that key (the watch has moved past it)."""
        if (namespace, name) in self._flags:
            self._deleted.setdefault((namespace, name), set()).add(key)
            self.wake(namespace, name)

    def take_deleted(self, namespace: str, name: str) -> set[cache.Key]:
        return self._deleted.pop((namespace, name), set())

    def wake(self, namespace: str, name: str) -> bool:
        """Wake one loop; False when none runs for that object (yet)."""
        flag = self._flags.get((namespace, name))
        if flag is None:
            return False
        flag.set()
        return True


MIN_POLL_WAIT = 0.5
"""An alias poll due now (or overdue) still waits this long: never a hot loop."""


def next_wait(
    reconciler: Reconciler,
    body: Mapping[str, Any],
    result: PassResult,
    now: float,
    overlay_expiry: float | None = None,
) -> float:
    """Seconds until the next pass when nothing wakes the loop earlier."""
    settings = reconciler.settings
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    waits = [settings.resync_interval_seconds]
    if result.retry_in is not None:
        waits.append(result.retry_in)
    if status.get("canary") or status.get("retiring"):
        waits.append(settings.rollout_tick_seconds)
    if ((body.get("spec") or {}).get("model") or {}).get("alias"):
        due = reconciler.resolver.next_due(meta.get("namespace", "default"), meta["name"])
        if due is not None:
            waits.append(max(MIN_POLL_WAIT, due - now))
    if overlay_expiry is not None:
        waits.append(max(MIN_POLL_WAIT, overlay_expiry - now))
    return max(0.0, min(waits))


async def _sleep(flag: asyncio.Event, stopped: Any, seconds: float) -> bool:
    """Sleep until woken, stopped or `seconds` pass; True when woken by an event."""
    if flag.is_set():
        return True
    waiters = {asyncio.ensure_future(flag.wait())}
    stop = getattr(stopped, "wait", None)
    if stop is not None:
        waiters.add(asyncio.ensure_future(stop()))
    try:
        await asyncio.wait(waiters, timeout=seconds,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await waiter
    return flag.is_set()


@dataclass
class _Memory:
    """What one loop keeps between its passes: small, since 10,000 loops keep one each.

    The object and its children are read afresh for every pass (from kopf's live body
    and the indexes) and dropped before the loop sleeps."""

    overlay: cache.Overlay = field(default_factory=cache.Overlay)
    written: tuple[int, cache.Packed] | None = None
    """resourceVersion and packed body of our last status write, until the watch has it."""
    unwritten: dict[str, Any] | None = None
    retry: int = 0


async def _step(
    memory: _Memory,
    body: Mapping[str, Any],
    reconciler: Reconciler,
    executor: Executor,
    indexes: list[Mapping[tuple[str, str], Iterable[cache.Packed]]],
    namespace: str,
    name: str,
    logger: Any,
) -> float:
    """One pass (or the write of the last one's status); the seconds to sleep after it."""
    loop = asyncio.get_running_loop()
    current: dict[str, Any] = cache.plain(body)  # kopf hands out read-only views
    seen = cache.version_of(current)
    if memory.written is not None and seen is not None and memory.written[0] > seen:
        current = cache.unpack(memory.written[1])  # our status write, not yet watched
    else:
        memory.written = None
    result = PassResult()
    if memory.unwritten is not None:
        # The last pass's decisions first: deciding again from the status it could not
        # write would repeat its Events, webhooks and write-back.
        await loop.run_in_executor(executor, functools.partial(
            reconciler.write_status, current, memory.unwritten, result, logger))
        memory.unwritten = result.unwritten
        if result.written is not None:
            current = result.written
            memory.written = _keep(result.written)
    if memory.unwritten is None:
        uid = str((current.get("metadata") or {}).get("uid") or "")
        watched = cache.children(indexes, namespace, label_value(name), uid)
        live = memory.overlay.over(watched, time.time())
        result = await loop.run_in_executor(
            executor,
            functools.partial(reconciler.run, current, live, retry=memory.retry, logger=logger),
        )
        memory.overlay.record(result.applied, result.deleted, live, time.time())
        if result.written is not None:
            memory.written = _keep(result.written)
        memory.unwritten = result.unwritten
    memory.retry = memory.retry + 1 if result.retry_in is not None else 0
    return next_wait(reconciler, result.written or current, result, time.time(),
                     memory.overlay.expiry())


def _keep(written: Mapping[str, Any]) -> tuple[int, cache.Packed] | None:
    version = cache.version_of(written)
    return None if version is None else (version, cache.pack(written))


async def run(
    *,
    body: Mapping[str, Any],
    reconciler: Reconciler,
    wakers: Wakers,
    executor: Executor,
    indexes: Iterable[Mapping[tuple[str, str], Iterable[cache.Packed]]],
    stopped: Any,
    logger: Any,
    slots: asyncio.Semaphore | None = None,
) -> None:
    """Reconcile one ModelDeployment until kopf stops the loop (the object is gone).

    `slots` (as many as the executor has threads) is taken before the pass copies its
    object and children: thousands of loops woken at once (a restart) then wait with
    nothing in hand, instead of each holding its copies while it waits for a thread."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta["name"])
    flag = wakers.register(namespace, name)
    memory = _Memory()
    kept = list(indexes)
    try:
        while not stopped:
            flag.clear()
            memory.overlay.forget(wakers.take_deleted(namespace, name), time.time())
            async with slots or contextlib.nullcontext():
                wait = await _step(memory, body, reconciler, executor, kept, namespace, name,
                                   logger)
            if await _sleep(flag, stopped, wait) and not stopped:
                await asyncio.sleep(SETTLE_SECONDS)
    finally:
        wakers.forget(namespace, name, flag)
