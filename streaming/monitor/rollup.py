"""Minute buckets -> hour buckets for the drivers' 24-hour and 7-day windows, exact and idempotent.

An hour bucket is a function of its 60 minute buckets: ``hour(brand, hour)`` holds the sum of their label
counts, ``hour_terms(brand, label, hour)`` the sum of their term counts for each driver label (the
``drivers.terms_per_hour`` most frequent terms; the rest, and the minutes' ``other``, as ``other``). A
rollup *recomputes* an hour from its minutes and replaces it whole, so running it twice writes the same
thing, and a late post (a redelivery, a backfill) is taken in by running it again.

Which hours: the sink marks every (brand, hour) it counted in (``rollup_due``, a sorted set scored with
the server's clock in µs, only ever raised), after the counts. ``Rollup.run_due`` takes the members whose
hour ended ``ROLLUP_SETTLE_MS`` ago, reads the minutes, writes the hour with the mark's score as its generation
(``ROLLUP_LUA`` replaces an hour only with a newer generation, so a slow monitor never overwrites a newer
rollup with an older one), and removes the mark only if it was not raised meanwhile (``DONE_LUA``): a post
counted after the minutes were read raised it, so the hour is recomputed at a later tick. Any number of
monitors may run it. A mark older than the minute buckets' TTL is dropped (its minutes may be gone).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import orjson

from affectstream.streaming.monitor.fightin_words import OTHER
from affectstream.streaming.worker.driver_terms import ROLLUP_SETTLE_MS, driver_labels
from affectstream.streaming.worker.redis_keys import RedisKeys, hour_minutes, hour_ms
from affectstream.streaming.worker.redis_scripts import run_pipelined
from affectstream.streaming.worker.settings import Settings

DUE_PER_TICK = 200          # hours one run recomputes at most
HOUR_MS = 3_600_000

# KEYS: rolled, hour, then the hour's term hash of each driver label
# ARGV: generation, ttl, L, then the hour's label counts as n and n (field, value) pairs, then for each of
#       the L term hashes the same  -> 1 written | 0 an equal or newer generation is there
ROLLUP_LUA = """
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if last >= tonumber(ARGV[1]) then return 0 end
local ttl, nl, i = ARGV[2], tonumber(ARGV[3]), 4
for k = 2, 2 + nl do
  redis.call('DEL', KEYS[k])
  local n = tonumber(ARGV[i])
  for j = 1, n do redis.call('HSET', KEYS[k], ARGV[i + 2 * j - 1], ARGV[i + 2 * j]) end
  if n > 0 then redis.call('EXPIRE', KEYS[k], ttl) end
  i = i + 1 + 2 * n
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
return 1
"""
# KEYS: rollup due   ARGV: member, the score it was read with  -> 1 removed | 0 marked again since
DONE_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) return 1 end
return 0
"""


# KEYS: per hour of one brand-day, its label hash then its L term hashes   ARGV: L, number of hours
# -> JSON [{label: sum}, {term: sum} for each label], summed over the hours. Summing in Redis sends one
# reply per day instead of every hour's fields (a 7-day window: 14), and one JSON string parses in C where
# RESP arrays of thousands of fields parse in Python.
SUM_LUA = """
local nl, nh = tonumber(ARGV[1]), tonumber(ARGV[2])
local sums = {}
for k = 0, nl do sums[k] = {} end
for h = 0, nh - 1 do
  for k = 0, nl do
    local flat, t = redis.call('HGETALL', KEYS[h * (nl + 1) + k + 1]), sums[k]
    for i = 1, #flat, 2 do t[flat[i]] = (t[flat[i]] or 0) + tonumber(flat[i + 1]) end
  end
end
local out = {}
for k = 0, nl do out[k + 1] = sums[k] end
return cjson.encode(out)
"""


def rollup_keys(keys: RedisKeys, brand: str, hour: str, labels: tuple[str, ...]) -> list[str]:
    """ROLLUP_LUA's KEYS, in the slot of the hour's label hash."""
    return [keys.hour_rolled(brand, hour), keys.hour(brand, hour), *(keys.hour_terms(brand, lb, hour) for lb in labels)]


@dataclass
class Counts:
    """Label counts and, per driver label, term counts (of a minute, an hour or a window)."""
    posts: collections.Counter = field(default_factory=collections.Counter)
    terms: dict[str, collections.Counter] = field(default_factory=lambda: collections.defaultdict(collections.Counter))

    def add(self, posts: dict, terms: dict[str, dict]) -> None:
        self.posts.update(_ints(posts))
        for label, counts in terms.items():
            self.terms[label].update(_ints(counts))


def _ints(raw: dict) -> dict[str, int]:
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


def top_terms(counts: collections.Counter, keep: int) -> dict[str, int]:
    """The ``keep`` most frequent terms (ties by term), the rest and any ``other`` summed as ``other``."""
    ranked = sorted(((t, n) for t, n in counts.items() if t != OTHER), key=lambda tn: (-tn[1], tn[0]))
    kept = dict(ranked[:keep])
    rest = counts.get(OTHER, 0) + sum(n for _, n in ranked[keep:])
    return {**kept, OTHER: rest} if rest else kept


def parse_member(member: bytes | str) -> tuple[str, str]:
    """A ``rollup_due`` member ``<hour>:<brand>`` -> (brand, hour)."""
    text = member.decode() if isinstance(member, bytes) else member
    hour, _, brand = text.partition(":")
    return brand, hour


class Rollup:
    """Recomputes due hour buckets on one client (scripts registered once)."""

    def __init__(self, client: Any, settings: Settings):
        self.client, self.settings = client, settings
        self.keys = settings.keys
        self.labels = driver_labels(settings)
        self._write = client.register_script(ROLLUP_LUA)
        self._done = client.register_script(DONE_LUA)
        self._sum = client.register_script(SUM_LUA)

    async def sum_hours(self, brand: str, hours: list[str]) -> Counts:
        """The sum of ``hours``' hour buckets, one script call per brand-day (its keys share a slot)."""
        by_day: dict[str, list[str]] = collections.defaultdict(list)
        for hour in hours:
            by_day[hour[:8]].append(hour)
        calls = [(self._sum, [k for h in day for k in rollup_keys(self.keys, brand, h, self.labels)[1:]],
                  [len(self.labels), len(day)]) for day in by_day.values()]
        out = Counts()
        for reply in await run_pipelined(self.client, calls):
            if isinstance(reply, BaseException):
                raise reply
            sums = [part or {} for part in orjson.loads(reply)]
            out.add(sums[0], dict(zip(self.labels, sums[1:])))
        return out

    async def hour_from_minutes(self, brand: str, hour: str) -> Counts:
        """The exact sum of the hour's minute buckets, read now."""
        return await self.minutes_counts(brand, hour_minutes(hour))

    async def minutes_counts(self, brand: str, minutes: list[str]) -> Counts:
        """The sum of the label and term counts of ``minutes`` of ``brand``'s buckets."""
        keys, labels = self.keys, self.labels
        async with self.client.pipeline(transaction=False) as pipe:
            for minute in minutes:
                pipe.hgetall(keys.brand(brand, minute))
                for label in labels:
                    pipe.hgetall(keys.terms(brand, label, minute))
            raw = await pipe.execute()
        out, step = Counts(), 1 + len(labels)
        for i in range(0, len(raw), step):
            out.add(raw[i], dict(zip(labels, raw[i + 1:i + step])))
        return out

    async def write_hour(self, brand: str, hour: str, counts: Counts, generation: int) -> bool:
        """Replace the hour bucket with ``counts`` unless a rollup of an equal or newer generation is there."""
        args: list[Any] = [generation, self.settings.drivers.hour_ttl_s, len(self.labels)]
        for fields in (dict(counts.posts), *(top_terms(counts.terms.get(lb, collections.Counter()),
                                                        self.settings.drivers.terms_per_hour) for lb in self.labels)):
            args.append(len(fields))
            args.extend(x for pair in fields.items() for x in pair)
        return bool(await self._write(keys=rollup_keys(self.keys, brand, hour, self.labels), args=args))

    async def run_due(self, now_ms: int) -> int:
        """Recompute the due hours (module docstring); returns how many hour buckets were written."""
        if not self.labels:
            return 0
        due = self.keys.rollup_due
        marks = await self.client.zrange(due, 0, -1, withscores=True)
        stale_before_us = (now_ms - self.settings.redis.bucket_ttl_s * 1000) * 1000
        written = taken = 0
        for member, score in marks:
            brand, hour = parse_member(member)
            if score < stale_before_us:
                await self._done(keys=[due], args=[member, int(score)])
                continue
            if hour_ms(hour) + HOUR_MS + ROLLUP_SETTLE_MS > now_ms:
                continue
            counts = await self.hour_from_minutes(brand, hour)
            written += await self.write_hour(brand, hour, counts, int(score))
            await self._done(keys=[due], args=[member, int(score)])
            taken += 1
            if taken >= DUE_PER_TICK:
                break
        return written
