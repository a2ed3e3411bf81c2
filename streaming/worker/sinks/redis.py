"""The Redis sink: per-post results, idempotent per-brand minute counts and the live channel.

Three Lua scripts per result, each on the keys of one hash slot, so the sink runs on Redis Cluster as on a
single Redis (``redis_keys``: which key lives beside which):

1. **claim** (the post's slot: ``post``, ``seen``, ``post_input``): sets ``seen`` to ``c`` with NX and stores
   the result and, when the stage gave one, the post's input for retraining (same TTL);
   a post claimed before returns its marker and its *first* result, which is what gets counted, so a
   redelivered post, even one classified again by a newer model, never changes what was stored or counted;
2. **count** (a bucket's slot: ``counted``, ``brand``, ``terms``), one call per brand-minute bucket of the
   batch: a post id new to the bucket's ``counted`` set increments the label the result counts there
   (``Result.bucket_labels``: a brand's bucket its target label, ``_all`` the post-level label, a post with
   no brand ``settings.brands.untargeted`` when set) and, for a driver label, each of its rationale terms
   in that label's term hash (``driver_terms.bucket_terms``; a hash keeps ``drivers.terms_per_bucket``
   distinct terms, later new ones count as ``other``), so each (post, bucket) counts once however often
   this step runs, and a post about two brands counts once in each, each with its own label and terms;
   then, with driver labels set, one call marks each (brand, hour) counted in as due for the rollup
   (``rollup_due``, after the counts, so a rollup that sees the mark sees the counts; an hour this sink
   marked stays marked until the rollup may take it, after its end, so until then it is not marked again:
   docs/drivers.md);
3. **announce** (the post's slot: ``seen``): turns ``c`` into ``1`` and publishes the result on the live
   channel, once.

A post whose marker is ``c`` was claimed by a write that did not finish (a crash between steps, or another
worker still at it), so a redelivery runs steps 2 and 3 again, with the stored first result; a marker of
``1`` means all is done and the redelivery does nothing. ``write`` returns the ids this call announced:
every post is in exactly one call's set, and the stage's metrics count only those.

`write` treats Redis being unreachable *and* Redis refusing writes for a passing reason (OOM under
`noeviction`, READONLY replica, LOADING, BUSY script, MASTERDOWN, TRYAGAIN, CLUSTERDOWN, a cluster whose
slots are moving or not all served) as an outage: it backs off (capped), logs one line per interval rather
than per retry, retries only the steps not yet done, and returns once every result is accepted (or
`close()` / `stop()` abandons it). Any other refusal (WRONGTYPE, CROSSSLOT, a syntax error: a bug) raises at
once, so the stage crashes loudly instead of retrying forever. The scripts are registered once and run
through ``redis_scripts.run_pipelined``, which loads a script a flushed or restarted server lacks.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import (AskError, BusyLoadingError, ClusterDownError, NoScriptError, ReadOnlyError,
                              RedisClusterException, ResponseError, SlotNotCoveredError)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from affectstream.streaming.worker.redis_client import async_redis
from affectstream.streaming.worker.driver_terms import MARK_AGAIN_AFTER_MS, TERM_SEP, bucket_terms, driver_labels
from affectstream.streaming.worker.redis_keys import HOUR_CHARS, RedisKeys, hour_ms, hour_of, minute_bucket
from affectstream.streaming.worker.redis_scripts import run_pipelined
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.sinks import Sink, SinkItem
from affectstream.streaming.worker.sinks.redis_lua import SCRIPTS

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
MARKS_KEPT = 4096   # marks the sink holds before it forgets the expired ones (a mark is checked for expiry anyway)
LOG_EVERY_S = 10.0  # while retrying: one warning line per interval, whatever the number of retries
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)
# refusals that pass by themselves: Redis is up but will not take writes right now
PASSING_REFUSALS = ("OOM", "READONLY", "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
_PASSING_CLASSES = (OutOfMemoryError, ReadOnlyError, BusyLoadingError, TryAgainError, ClusterDownError,
                    AskError, SlotNotCoveredError)  # AskError: MOVED/ASK left over while slots move
# the code may be wrapped by a script error ("ERR Error running script ... -OOM command not allowed ...")
_PASSING_RE = re.compile(r"(?:^|[\s\-:])(" + "|".join(PASSING_REFUSALS) + r")\b")
# the cluster client's own "no node answers / the slot map is moving" (its other complaints are bugs)
_CLUSTER_PASSING = ("cannot be connected", "not covered", "could not agree")



def claim_keys(keys: RedisKeys, post_id: str) -> list[str]:
    return [keys.post(post_id), keys.seen(post_id), keys.post_input(post_id)]


@functools.lru_cache(maxsize=1 << 14)  # one call per bucket per batch; a stream's batches share buckets
def count_keys(keys: RedisKeys, brand: str, minute: str, term_labels: tuple[str, ...] = ()) -> tuple[str, ...]:
    """COUNT_LUA's keys: the bucket's counted set and label hash, then the term hash of each label passed."""
    return (keys.counted(brand, minute), keys.brand(brand, minute),
            *(keys.terms(brand, label, minute) for label in term_labels))


def announce_keys(keys: RedisKeys, post_id: str) -> list[str]:
    return [keys.seen(post_id)]


CLAIM, COUNT, MARK, ANNOUNCE, DONE = "claim", "count", "mark", "announce", "done"


@dataclass
class _Write:
    """One result's way through the steps; ``counted`` is the result counted and announced (the stored first
    one for a post claimed before), ``buckets`` those of its buckets not yet counted, ``labels`` the label
    and ``terms`` the rationale terms it counts in each brand's bucket, joined (the first result's)."""
    item: SinkItem
    step: str = CLAIM
    counted: Result | None = None
    json: bytes = b""
    buckets: set[tuple[str, str]] = field(default_factory=set)
    labels: dict[str, str] = field(default_factory=dict)
    terms: dict[str, str] = field(default_factory=dict)   # brand -> its terms joined by TERM_SEP
    minute: str = ""

    def to_count(self, counted: Result, json: bytes, untargeted_brand: str, with_terms: bool = True) -> None:
        """Count ``counted`` (this item's result, or the stored first one of a post claimed before)."""
        if counted is not self.counted:   # not the result `prepare` read
            self.prepare(counted, json, untargeted_brand, with_terms)
        self.step = COUNT

    def prepare(self, counted: Result, json: bytes, untargeted_brand: str, with_terms: bool) -> None:
        """Its buckets, labels and terms (``to_count`` makes them the ones counted)."""
        self.counted, self.json = counted, json
        self.minute = minute = minute_bucket(counted.event_ms)
        self.labels = counted.bucket_labels(untargeted_brand)
        terms = bucket_terms(counted, untargeted_brand) if with_terms else {}
        self.terms = {brand: TERM_SEP.join(words) for brand, words in terms.items() if words}
        self.buckets = {(brand, minute) for brand in self.labels}

    def count_args(self, brand: str, counted_labels: tuple[str, ...]) -> tuple[str, str, str]:
        """COUNT_LUA's arguments for this post in ``brand``'s bucket: id, label, its terms joined."""
        label = self.labels[brand]
        return self.counted.id, label, self.terms.get(brand, "") if label in counted_labels else ""


class SinkStopped(RuntimeError):
    """`write` was abandoned because `stop()` was called; the batch is NOT stored (do not commit)."""


def is_retryable(error: BaseException) -> bool:
    """Unreachable, or a refusal that will pass (module docstring); False for a bug (WRONGTYPE …)."""
    if isinstance(error, (NoScriptError, *_PASSING_CLASSES)):
        return True
    if isinstance(error, UNREACHABLE):
        return True
    if isinstance(error, RedisClusterException):
        return any(text in str(error) for text in _CLUSTER_PASSING)
    if isinstance(error, ResponseError):
        code = getattr(error, "status_code", None) or ""
        return bool(_PASSING_RE.search(f"{code} {error}"))
    return False


class RedisSink(Sink):
    def __init__(self, settings: Settings, app: Any = None, client: aioredis.Redis | None = None):
        super().__init__(settings, app)
        self._own_client = client is None
        self.client = client if client is not None else async_redis(settings)
        self._claim, self._count, self._mark, self._announce = (self.client.register_script(s) for s in SCRIPTS)
        self.driver_labels = driver_labels(settings)
        self._marked: dict[str, int] = {}  # "<hour>:<brand>" marked by this sink -> until when that suffices
        self._prune_above = MARKS_KEPT
        self._stop = asyncio.Event()
        self._stalled = 0  # writes that failed at least once and have not succeeded yet

    @property
    def stalled(self) -> bool:
        return self._stalled > 0

    def stop(self) -> None:
        """Ask a retrying `write` to give up (it raises SinkStopped)."""
        self._stop.set()

    async def write(self, batch: list[SinkItem]) -> set[str]:
        """Claim, store, count and announce every result not done before; retries outages and passing
        refusals with capped backoff, retrying only the steps not yet done. Returns the ids this call
        announced (a redelivered post is accepted but not in the set)."""
        fresh: set[str] = set()
        pending = [_Write(item) for item in batch]
        delay, attempt, started, next_log = RETRY_FIRST_S, 0, time.monotonic(), 0.0
        try:
            while pending:
                error = await self._attempt(pending, fresh)
                pending = [w for w in pending if w.step != DONE]
                if not pending:
                    break
                attempt += 1
                self._stalled += attempt == 1
                if self._stop.is_set():
                    raise SinkStopped(f"redis write abandoned after {attempt} attempts") from error
                if time.monotonic() >= next_log:
                    next_log = time.monotonic() + LOG_EVERY_S
                    log.warning("redis write failed (%s: %s); retrying with backoff up to %.0fs (attempt %d, "
                                "%d results pending, first id %s; next report in %.0fs)", type(error).__name__,
                                str(error)[:120], RETRY_MAX_S, attempt, len(pending), pending[0].item.result.id,
                                LOG_EVERY_S)
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        finally:
            self._stalled -= attempt > 0
        if attempt:
            log.info("redis write succeeded after %d retries in %.1fs (%d results)", attempt,
                     time.monotonic() - started, len(batch))
        return fresh

    async def _attempt(self, pending: list[_Write], fresh: set[str]) -> BaseException | None:
        """One pipeline per step, each for the results at that step; returns the last retryable error (None
        when every result got through). A refusal that is a bug raises."""
        error = None
        for step in (self._claim_step, self._count_step, self._mark_step, self._announce_step):
            try:
                error = await step(pending, fresh) or error
            except BaseException as e:  # noqa: BLE001 - classified here; not retryable -> re-raised
                if not is_retryable(e):
                    raise
                return e
        return error

    async def _run(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """One non-transactional pipeline of script calls (split by node on a cluster); per call its reply
        or the exception Redis returned."""
        return await run_pipelined(self.client, calls)

    async def _claim_step(self, pending: list[_Write], fresh: set[str]) -> BaseException | None:
        s, todo = self.settings, [w for w in pending if w.step == CLAIM]
        untargeted, with_terms = s.brands.untargeted, bool(self.driver_labels)
        calls = [(self._claim, claim_keys(s.keys, w.item.result.id),
                  [w.item.json, s.redis.result_ttl_s, s.redis.seen_ttl_s, w.item.input or b""]) for w in todo]
        replies, _ = await asyncio.gather(self._run(calls), self._prepare(todo, untargeted, with_terms))
        error = None
        for w, reply in zip(todo, replies):
            if isinstance(reply, BaseException):
                error = _retryable_or_raise(reply)
            elif reply == 1:
                w.to_count(w.item.result, w.item.json, untargeted, with_terms)
            elif reply[0] == b"c":  # claimed by a write that has not finished: finish it with the first result
                stored = reply[1] or w.item.json
                first = w.item.result if stored == w.item.json else Result.from_json(stored)
                w.to_count(first, stored, untargeted, with_terms)
            else:
                w.step = DONE
        return error

    @staticmethod
    async def _prepare(todo: list[_Write], untargeted: str, with_terms: bool) -> None:
        """Each result's buckets, labels and terms while Redis runs the claims: the claim pipeline is sent
        before this runs (it is the first of the two gathered tasks and does not wait before it sends), and
        nearly every post is claimed now, so its own result is what gets counted."""
        await asyncio.sleep(0)
        for w in todo:
            if w.counted is not w.item.result:
                w.prepare(w.item.result, w.item.json, untargeted, with_terms)

    async def _count_step(self, pending: list[_Write], fresh: set[str]) -> BaseException | None:
        s, todo = self.settings, [w for w in pending if w.step == COUNT]
        by_bucket: dict[tuple[str, str], list[_Write]] = collections.defaultdict(list)
        for w in todo:
            for bucket in w.buckets:
                by_bucket[bucket].append(w)
        labels, ttl, cap = self.driver_labels, s.redis.bucket_ttl_s, s.drivers.terms_per_bucket
        calls = []
        for (brand, minute), writes in by_bucket.items():
            args = [x for w in writes for x in w.count_args(brand, labels)]
            with_terms = {w.labels[brand] for w in writes if brand in w.terms}
            passed = tuple(label for label in labels if label in with_terms)   # only the term hashes written
            keys = count_keys(s.keys, brand, minute, passed)
            calls.append((self._count, keys, [ttl, cap, len(passed), *passed, *args]))
        error = None
        for (bucket, writes), reply in zip(by_bucket.items(), await self._run(calls)):
            if isinstance(reply, BaseException):
                error = _retryable_or_raise(reply)
                continue
            for w in writes:
                w.buckets.discard(bucket)
        for w in todo:
            if not w.buckets:
                w.step = MARK if self.driver_labels else ANNOUNCE
        return error

    async def _mark_step(self, pending: list[_Write], fresh: set[str]) -> BaseException | None:
        s, todo = self.settings, [w for w in pending if w.step == MARK]
        if not todo:
            return None
        now = int(time.time() * 1000)
        if len(self._marked) > self._prune_above:   # forget marks that no longer suffice (a run meets many hours)
            self._marked = {m: until for m, until in self._marked.items() if until > now}
            self._prune_above = max(MARKS_KEPT, 2 * len(self._marked))
        marked = self._marked
        hours = {hour_member(brand, w.minute) for w in todo for brand in w.labels}
        members = sorted(m for m in hours if marked.get(m, 0) <= now)
        if members:
            reply = (await self._run([(self._mark, [s.keys.rollup_due], [s.drivers.hour_ttl_s, *members])]))[0]
            if isinstance(reply, BaseException):
                return _retryable_or_raise(reply)
            # an hour not yet MARK_AGAIN_AFTER_MS past its end keeps this mark until the rollup may take it
            self._marked.update((m, until) for m in members if (until := _mark_lasts(m)) > now)
        for w in todo:
            w.step = ANNOUNCE
        return None

    async def _announce_step(self, pending: list[_Write], fresh: set[str]) -> BaseException | None:
        s, todo = self.settings, [w for w in pending if w.step == ANNOUNCE]
        replies = await self._run([(self._announce, announce_keys(s.keys, w.item.result.id), [s.keys.live, w.json])
                                   for w in todo])
        error = None
        for w, reply in zip(todo, replies):
            if isinstance(reply, BaseException):
                error = _retryable_or_raise(reply)
                continue
            w.step = DONE
            if reply == 1:
                fresh.add(w.item.result.id)
        return error

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):  # the normal case: no stop during the backoff
            await asyncio.wait_for(self._stop.wait(), delay)

    async def brand_counts(self, brand: str, minute: str) -> dict[str, int]:
        """Label -> count for one brand-minute bucket (dashboards, tests)."""
        raw = await self.client.hgetall(self.settings.keys.brand(brand, minute))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def close(self) -> None:
        self.stop()
        if self._own_client:
            await self.client.aclose()


@functools.lru_cache(maxsize=4096)   # one per bucket of every result; a stream's results share them
def hour_member(brand: str, minute: str) -> str:
    """The rollup's member for a brand-minute bucket: "<hour>:<brand>" (``RedisKeys.rollup_due``)."""
    return f"{hour_of(minute)}:{brand}"


def _mark_lasts(member: str) -> int:
    """Until when (epoch ms) a mark of ``member``'s hour stays in ``rollup_due`` for sure: the rollup takes
    it only ``ROLLUP_SETTLE_MS`` after the hour's end; the sink stops relying on it halfway there."""
    return hour_ms(member[:HOUR_CHARS]) + HOUR_MS + MARK_AGAIN_AFTER_MS


def _retryable_or_raise(error: BaseException) -> BaseException:
    if not is_retryable(error):
        raise error
    return error
