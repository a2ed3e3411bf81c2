"""Shadow scoring: a candidate model scores a share of live posts next to the deployed one, and its answers
are kept apart — the ``sentiment-shadow`` topic, ``shadow_result(id)`` and ``shadow_agree(version)`` — never
the counts, the live channel or the ``sentiment`` topic.

Which posts: ``shadowed(post_id, share)``, a hash of the post id (not Python's salted ``hash``), so every
worker and every redelivery of a post agree on whether it is shadowed. The classify stage gathers them,
with the deployed model's results, across micro-batches and has the candidate score them in one call once
``SHADOW_CALL_MIN`` (16) are waiting, or when its 5 s timer fires: at a 10 % share a batch of 32 holds about
three, and one call per batch that small cost more per post than the batch itself (``bench/shadow.py``).
Posts still waiting when the worker stops or the candidate leaves shadow are not scored (best effort).

What is written, per shadowed post, by ``ShadowWriter.write`` (best effort: a failure is logged and counted
in ``affectstream_shadow_total{outcome="write_failed"}``, and never fails or delays the real batch):

1. the candidate's Result JSON to the ``sentiment-shadow`` topic (key: post id; at least once, like
   ``sentiment``: a redelivered post is sent again, readers keep one per key);
2. ``shadow_result(id)`` set with NX and the results' TTL (one script in the post's slot); only a post set
   now goes on to
3. ``shadow_agree(candidate)``: ``HINCRBY all:<deployed label>:<candidate label>`` and, for each brand of the
   result, ``brand:<brand>:<deployed label>:<candidate label>`` (the brand's target labels).

Step 2 is the idempotence check, so a redelivered post adds nothing to the agreement counts; a worker that
dies between steps 2 and 3 leaves that post out of the counts (an undercount, never a double count: the
counts are a statistic, the stored shadow results are the record).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from affectstream.streaming.worker import metrics
from affectstream.streaming.worker.redis_keys import ALL_BRANDS
from affectstream.streaming.worker.redis_scripts import run_pipelined
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings

log = logging.getLogger("affectstream.shadow")

WRITE_TIMEOUT_S = 10.0  # a shadow write still pending after this is abandoned (counted as write_failed)

# KEYS: shadow_result   ARGV: result json, ttl  -> 1 when stored now, 0 when the post was shadowed before
STORE_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
return 0
"""


def shadowed(post_id: str, share: float) -> bool:
    """Whether ``post_id`` is in the shadowed share: its hash, read as a number in [0, 1), is below ``share``."""
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(post_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def agreement_fields(deployed: Result, candidate: Result) -> list[str]:
    """The ``shadow_agree`` fields one shadowed post increments: ``all:<dep>:<cand>`` for the post-level
    labels, ``brand:<b>:<dep>:<cand>`` for each brand both results are about (their target labels)."""
    fields = [f"all:{deployed.label}:{candidate.label}"]
    dep, cand = deployed.bucket_labels(), candidate.bucket_labels()
    fields.extend(f"brand:{brand}:{dep[brand]}:{cand[brand]}"
                  for brand in dep if brand != ALL_BRANDS and brand in cand)
    return fields


def parse_agreement(counts: dict[str, int]) -> dict[str, dict[tuple[str, str], int]]:
    """``shadow_agree`` fields -> {"all" or brand: {(deployed label, candidate label): count}}."""
    out: dict[str, dict[tuple[str, str], int]] = {}
    for field, n in counts.items():
        head, _, rest = field.partition(":")
        if head == "all":
            scope, (dep, _, cand) = "all", rest.partition(":")
        elif head == "brand":
            brand_dep, _, cand = rest.rpartition(":")
            scope, _, dep = brand_dep.rpartition(":")
        else:
            continue
        bucket = out.setdefault(scope, {})
        bucket[(dep, cand)] = bucket.get((dep, cand), 0) + int(n)
    return out


def disagreement(counts: dict[str, int]) -> tuple[float | None, int]:
    """Post-level share of shadowed posts where the candidate's label differs, and the sample size."""
    pairs = parse_agreement(counts).get("all", {})
    total = sum(pairs.values())
    if not total:
        return None, 0
    return sum(n for (dep, cand), n in pairs.items() if dep != cand) / total, total


@dataclass(frozen=True)
class ShadowItem:
    """One shadowed post: the deployed model's result (not written here) and the candidate's."""
    deployed: Result
    candidate: Result

    @property
    def json(self) -> bytes:
        return self.candidate.to_json()


SendRecords = Callable[[dict[str, list[tuple[bytes | None, bytes]]]], Awaitable[None]]


class ShadowWriter:
    """Writes shadow results (module docstring); ``send`` sends {"shadow": [(key, value)]} to the topic
    (``sinks.topic.send_all`` bound to the worker's app), None to skip the topic (tests, bench)."""

    def __init__(self, settings: Settings, send: SendRecords | None, client: Any = None):
        from affectstream.streaming.worker.redis_client import async_redis

        self.settings = settings
        self.send = send
        self._own_client = client is None
        self.client = client if client is not None else async_redis(settings)
        self._script = self.client.register_script(STORE_LUA)

    async def write(self, items: list[ShadowItem]) -> None:
        """Best effort: every failure is logged and counted, never raised."""
        if not items:
            return
        version = items[0].candidate.model
        try:
            await asyncio.wait_for(self._write(items), WRITE_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - shadow output must never fail the real batch
            metrics.observe_shadow(version, write_failed=len(items))
            log.warning("shadow write failed for %d posts of candidate %s (%s: %s); first id=%s", len(items),
                        version, type(e).__name__, str(e)[:120], items[0].candidate.id)

    async def _write(self, items: list[ShadowItem]) -> None:
        jobs = [self._store_and_count(items)]
        if self.send is not None:
            jobs.append(self.send({"shadow": [(i.candidate.id.encode("utf-8"), i.json) for i in items]}))
        for outcome in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _store(self, items: list[ShadowItem]) -> list[Any]:
        s = self.settings
        replies = await run_pipelined(self.client, [(self._script, [s.keys.shadow_result(item.candidate.id)],
                                                     [item.json, s.redis.result_ttl_s]) for item in items])
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def _store_and_count(self, items: list[ShadowItem]) -> None:
        s = self.settings
        replies = await self._store(items)
        fresh = [item for item, reply in zip(items, replies) if reply == 1]
        if not fresh:
            return
        key = s.keys.shadow_agree(fresh[0].candidate.model)
        async with self.client.pipeline(transaction=False) as pipe:
            for item in fresh:
                for field in agreement_fields(item.deployed, item.candidate):
                    pipe.hincrby(key, field, 1)
            await pipe.execute()
        agree = sum(item.deployed.label == item.candidate.label for item in fresh)
        metrics.observe_shadow(fresh[0].candidate.model, agree=agree, disagree=len(fresh) - agree)

    async def close(self) -> None:
        if self._own_client:
            await self.client.aclose()
