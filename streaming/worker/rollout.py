"""A candidate model under test (the registry's ``rollout.json``: shadow or canary) and its automatic rollback.

``Candidate`` is what the classify stage holds while a rollout is on: the candidate's predictor, the mode and
the share. Canary routes by partition: the posts of partitions ``p < ceil(share × partitions)`` are served by
the candidate (their results carry its version and count like any other), the rest by the deployed model,
so a post's partition — and therefore its model — does not change between redeliveries.

``RolloutWatch`` decides, on the classify stage's reload timer, whether the candidate must go. It rolls back
(``Registry.set_rollout(None, "off", 0, reason)``, logged, ``affectstream_rollbacks_total``) when, over at
least a minimum sample, one of these crosses its threshold (``settings.rollout``; defaults below):

=================  ============================================================  =========  =======
name               measure                                                        min sample threshold
=================  ============================================================  =========  =======
``error_rate``     candidate predict calls that raised / calls (this worker)      50 calls   > 0.05
``dlq_rate``       canary posts the candidate could not classify / canary posts   200 posts  > 0.02
                   (this worker; such a post is served by the deployed model)
``disagreement``   shadowed posts whose candidate label differs from the          200 posts  > 0.50
                   deployed one (``shadow_agree``, all workers together)
``analyst``        corrected posts (latest 1,000 in ``feedback_index``) whose     20 posts   > 0.50
                   candidate label (shadow result, or canary result of that
                   version) differs from the analyst's latest correction
=================  ============================================================  =========  =======

A candidate that fails to load at ``MAX_LOAD_FAILURES`` (3) checks in a row is rolled back too (reason
``load_failed``).

Corrections are for posts the deployed model got wrong, so the deployed model disagrees with nearly all of
them; a candidate that disagrees with more than half is no fix. A candidate that merely differs from the
deployed model is expected (that is why it was trained), so ``disagreement`` only catches a candidate that
answers something else on most posts (a broken head, a wrong label order).

Several workers may decide at once: the rollback re-reads ``rollout.json`` under a lock file of its own and
acts only while that candidate is still in shadow or canary, so one worker writes ``off`` (and one history
line) and the others find it done. (The registry root is a shared volume; ``flock`` holds across the
processes of one host and, on most network file systems, across hosts.)
"""
from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import math
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from affectstream.model.config import SENTIMENT_LABELS
from affectstream.model.registry import Registry, Rollout
from affectstream.streaming.worker import metrics
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import RolloutSettings, Settings
from affectstream.streaming.worker.shadow import disagreement

log = logging.getLogger("affectstream.rollout")

ANALYST_WINDOW = 1000  # latest corrected posts read per check
MAX_LOAD_FAILURES = 3  # a candidate that fails to load at this many checks in a row is rolled back


@dataclass(frozen=True)
class Candidate:
    """The candidate a micro-batch runs with (snapshotted at the batch's start)."""
    predictor: Any
    mode: str            # "shadow" | "canary"
    share: float
    partitions: int = 1  # of the source topic (canary)

    @property
    def version(self) -> str:
        return self.predictor.version

    @property
    def canary_partitions(self) -> frozenset[int]:
        if self.mode != "canary":
            return frozenset()
        return frozenset(range(min(math.ceil(self.share * self.partitions - 1e-9), self.partitions)))


def canary_posts(candidate: Candidate, parsed: list[tuple[Any, bytes]], raws: list[bytes],
                 partitions: list[int | None]) -> list[int]:
    """Indexes into ``parsed`` (post, raw value) of the posts whose event came from a canary partition."""
    part_of = {id(raw): p for raw, p in zip(raws, partitions)}
    return [i for i, (_, raw) in enumerate(parsed) if part_of.get(id(raw)) in candidate.canary_partitions]


def tally_canary(candidate: Candidate, stats: "CandidateStats | None", failed_ids: list[str], served: int,
                 deployed: str) -> None:
    """Count a batch's canary posts (``served`` routed to the candidate, ``failed_ids`` it could not classify,
    left to ``deployed``) in the watch's stats, the metrics and the log."""
    for post_id in failed_ids:
        log.warning("canary %s could not classify id=%s; served by %s", candidate.version, post_id, deployed)
    if stats is not None:
        stats.canary_posts += served
        stats.canary_dlq += len(failed_ids)
    metrics.observe_canary(candidate.version, results=served - len(failed_ids), dlq=len(failed_ids))


def wanted(rollout: Rollout) -> str | None:
    """The candidate version the rollout asks workers to hold (None when off)."""
    return rollout.candidate if rollout.mode in ("shadow", "canary") and rollout.candidate else None


# the thresholds are settings (``settings.rollout``, ``AFFECTSTREAM_ROLLBACK_*``); tests build their own
RollbackPolicy = RolloutSettings


@dataclass
class CandidateStats:
    """This worker's tally for the loaded candidate (reset when another candidate is loaded)."""
    version: str
    calls: int = 0
    failed_calls: int = 0
    canary_posts: int = 0
    canary_dlq: int = 0

    def call(self, failed: bool) -> None:
        self.calls += 1
        self.failed_calls += failed


@dataclass(frozen=True)
class Measures:
    """What a check saw: each rate with its sample size (None: nothing to judge yet)."""
    error_rate: tuple[float | None, int]
    dlq_rate: tuple[float | None, int]
    disagreement: tuple[float | None, int]
    analyst: tuple[float | None, int]


def verdict(m: Measures, policy: RollbackPolicy) -> tuple[str, str] | None:
    """(reason, detail) of the first threshold crossed over its minimum sample; None when all is well."""
    checks = (("error_rate", m.error_rate, policy.min_calls, policy.max_error_rate),
              ("dlq_rate", m.dlq_rate, policy.min_posts, policy.max_dlq_rate),
              ("disagreement", m.disagreement, policy.min_posts, policy.max_disagreement),
              ("analyst", m.analyst, policy.min_corrections, policy.max_analyst_disagreement))
    for name, (rate, n), minimum, limit in checks:
        if rate is not None and n >= minimum and rate > limit:
            return name, f"{name} {rate:.3f} > {limit:g} over {n}"
    return None


def correction_disagreement(corrections: dict[str, bytes], candidate: Result) -> tuple[int, int]:
    """(disagreeing, compared) between one post's latest corrections (``feedback_latest``: field "" the
    post-level label, a brand id that brand's label) and the candidate's result for it."""
    labels = candidate.bucket_labels()
    seen = disagree = 0
    for target, raw in corrections.items():
        try:
            label = orjson.loads(raw).get("label")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        brand = target.decode() if isinstance(target, bytes) else target
        mine = candidate.label if brand == "" else labels.get(brand)
        if not isinstance(label, str) or mine is None:
            continue
        seen += 1
        disagree += mine != label
    return disagree, seen


class RolloutWatch:
    """Measures the loaded candidate and rolls it back through the registry (module docstring)."""

    def __init__(self, settings: Settings, registry: Registry, client: Any, policy: RollbackPolicy | None = None):
        self.settings = settings
        self.registry = registry
        self.client = client
        self.policy = policy or settings.rollout
        self.stats: CandidateStats | None = None

    def reset(self, version: str | None) -> None:
        self.stats = CandidateStats(version) if version else None

    async def measure(self, candidate: Candidate) -> Measures:
        stats = self.stats if self.stats and self.stats.version == candidate.version else CandidateStats(candidate.version)
        error = (stats.failed_calls / stats.calls if stats.calls else None, stats.calls)
        dlq = (stats.canary_dlq / stats.canary_posts if stats.canary_posts else None, stats.canary_posts)
        agree = {}
        if candidate.mode == "shadow":  # the post-level fields only: the hash holds labels² per brand too
            own = getattr(getattr(candidate.predictor, "config", None), "sentiment_labels", ())
            labels = tuple(dict.fromkeys((*SENTIMENT_LABELS, *own)))
            fields = [f"all:{dep}:{cand}" for dep in labels for cand in labels]
            values = await self.client.hmget(self.settings.keys.shadow_agree(candidate.version), fields)
            agree = {f: int(v) for f, v in zip(fields, values) if v is not None}
        return Measures(error, dlq, disagreement(agree), await self.analyst(candidate))

    async def analyst(self, candidate: Candidate) -> tuple[float | None, int]:
        """The candidate's disagreement with the latest corrections of the posts it scored."""
        keys = self.settings.keys
        ids = [i.decode() for i in await self.client.zrevrange(keys.feedback_index(), 0, ANALYST_WINDOW - 1)]
        if not ids:
            return None, 0
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id in ids:
                pipe.hgetall(keys.feedback_latest(post_id))
                pipe.get(keys.shadow_result(post_id) if candidate.mode == "shadow" else keys.post(post_id))
            replies = await pipe.execute()
        disagree = seen = 0
        for corrections, stored in zip(replies[::2], replies[1::2]):
            if not corrections or not stored:
                continue
            try:
                result = Result.from_json(stored)
            except (orjson.JSONDecodeError, TypeError, ValueError):
                continue
            if result.model != candidate.version:  # canary: a post the deployed model served
                continue
            d, n = correction_disagreement(corrections, result)
            disagree, seen = disagree + d, seen + n
        return (disagree / seen if seen else None), seen

    async def check(self, candidate: Candidate) -> str | None:
        """Measure; past a threshold, roll the candidate back. Returns the reason when this call did."""
        found = verdict(await self.measure(candidate), self.policy)
        if found is None:
            return None
        reason, detail = found
        done = await asyncio.to_thread(end_rollout, self.registry, candidate.version, f"auto rollback: {detail}")
        if done:
            metrics.observe_rollback(candidate.version, reason)
            log.warning("candidate %s rolled back (%s mode): %s", candidate.version, candidate.mode, detail)
        return reason if done else None


def end_rollout(registry: Registry, version: str, reason: str) -> bool:
    """Turn the rollout off if ``version`` is still the candidate in shadow or canary; False when another
    worker (or an operator) already changed it. Watchers on one host take ``<root>/.rollback.lock`` around
    the read and the write, so only one of them writes (and logs) the rollback."""
    registry.root.mkdir(parents=True, exist_ok=True)
    with open(registry.root / ".rollback.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if wanted(registry.rollout()) != version:
                return False
            registry.set_rollout(None, "off", 0.0, reason)
            return True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class CandidateSlot:
    """The classify stage's candidate: follows ``rollout.json`` (loads the candidate with the stage's own
    ``load_model`` in its inference thread, retunes mode and share, drops it when the rollout ends) and lets
    the watch judge it, on the stage's reload timer."""

    def __init__(self, settings: Settings, registry: Registry, load_model: Callable[[str], Any],
                 pool: Executor, client: Any):
        self.settings = settings
        self.registry = registry
        self.load_model = load_model
        self.pool = pool
        self.watch = RolloutWatch(settings, registry, client)
        self.candidate: Candidate | None = None
        self._path: str | None = None  # the candidate's resolved directory
        self._load_failures: dict[str, int] = {}

    @property
    def stats(self) -> CandidateStats | None:
        return self.watch.stats

    def holds(self, resolved_dir: str) -> bool:
        """Whether the loaded candidate is the model at ``resolved_dir`` (just promoted: take it over)."""
        return self.candidate is not None and self._path == resolved_dir

    def drop(self) -> None:
        self.candidate, self._path = None, None
        metrics.set_candidate(None)

    async def check(self, deployed: str) -> None:
        rollout = await asyncio.to_thread(self.registry.rollout)
        want = wanted(rollout)
        if want == deployed:  # promoted: it serves everything now
            want = None
        have = self.candidate.version if self.candidate is not None else None
        if want is None and have is not None:
            log.info("candidate %s unloaded (rollout %s%s)", have, rollout.mode,
                     f": {rollout.reason}" if rollout.reason else "")
            self.drop()
        elif want is not None and want != have:
            path = self.registry.version_dir(want)
            try:
                predictor = await asyncio.get_running_loop().run_in_executor(self.pool, self.load_model, str(path))
            except Exception as e:  # noqa: BLE001 - keep serving; try again at the next check, then give up
                failures = self._load_failures[want] = self._load_failures.get(want, 0) + 1
                log.warning("candidate %s failed to load from %s (%s: %s); attempt %d of %d", want, path,
                            type(e).__name__, e, failures, MAX_LOAD_FAILURES)
                detail = f"load_failed {failures} times: {type(e).__name__}: {str(e)[:200]}"
                if failures >= MAX_LOAD_FAILURES and await asyncio.to_thread(
                        end_rollout, self.registry, want, f"auto rollback: {detail}"):
                    metrics.observe_rollback(want, "load_failed")
                    log.warning("candidate %s rolled back (%s mode): %s", want, rollout.mode, detail)
                return
            self._load_failures.pop(want, None)
            self.candidate = Candidate(predictor, rollout.mode, rollout.share, self.settings.kafka.partitions)
            self._path = str(path.resolve())
            self.watch.reset(predictor.version)
            log.info("candidate %s loaded: %s, share %g", predictor.version, rollout.mode, rollout.share)
        elif want is not None and (self.candidate.mode, self.candidate.share) != (rollout.mode, rollout.share):
            self.candidate = dataclasses.replace(self.candidate, mode=rollout.mode, share=rollout.share)
            log.info("candidate %s now %s, share %g", want, rollout.mode, rollout.share)
        candidate = self.candidate
        if candidate is None:
            return
        metrics.set_candidate(candidate.version, candidate.mode, candidate.share)
        if await self.watch.check(candidate):
            self.drop()
