"""The drivers' term counts against a recount from the stored results (the chaos run's audit and the
streamed tests): every minute bucket's kept terms equal the recount, its ``other`` the rest of the recount,
and every rolled-up hour equals the sum of its minutes (docs/drivers.md).

A minute bucket keeps the first ``drivers.terms_per_bucket`` distinct terms it counts, in counting order,
which a recount cannot know; but a kept term was counted from its first post on, so its count is exact,
and ``other`` holds exactly the rest.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Iterable

from affectstream.streaming.monitor.fightin_words import OTHER
from affectstream.streaming.monitor.rollup import top_terms
from affectstream.streaming.worker.driver_terms import bucket_terms, driver_labels
from affectstream.streaming.worker.redis_client import sync_redis
from affectstream.streaming.worker.redis_keys import hour_minutes, hour_of, minute_bucket
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings

Bucket = tuple[str, str, str]   # (brand, minute or hour, label)


@dataclass
class TermAudit:
    buckets: int = 0                # minute term buckets compared
    terms: int = 0                  # term occurrences recounted
    over: int = 0                   # counted above the recount (a post counted twice)
    under: int = 0                  # below the recount (a post lost)
    hours: int = 0                  # rolled-up hours compared with their minutes
    hours_off: int = 0              # of them not equal to the sum of their minutes
    mismatches: list = field(default_factory=list)  # (brand, minute, label, term, redis, recount), a few

    @property
    def ok(self) -> bool:
        return not (self.over or self.under or self.hours_off)


def recount(results: Iterable[Result], settings: Settings) -> dict[Bucket, collections.Counter]:
    """(brand, minute, label) -> term counts, from each stored first result once."""
    labels, untargeted = driver_labels(settings), settings.brands.untargeted
    out: dict[Bucket, collections.Counter] = collections.defaultdict(collections.Counter)
    for result in results:
        minute = minute_bucket(result.event_ms)
        terms = bucket_terms(result, untargeted)
        for brand, label in result.bucket_labels(untargeted).items():
            if label in labels:
                out[(brand, minute, label)].update(terms.get(brand, ()))
    return out


def _read(r, keys_of: list[str]) -> list[collections.Counter]:
    pipe = r.pipeline(transaction=False)
    for key in keys_of:
        pipe.hgetall(key)
    return [collections.Counter({k.decode(): int(v) for k, v in raw.items()}) for raw in pipe.execute()]


def audit_terms(settings: Settings, results: Iterable[Result], client=None) -> TermAudit:
    """Compare Redis's minute term buckets and rolled-up hours with a recount of ``results``."""
    r = client or sync_redis(settings)
    keys, labels = settings.keys, driver_labels(settings)
    expected = recount(results, settings)
    minutes = {(b, m) for b, m, _ in expected}
    for key in r.scan_iter(match=keys.brand_pattern(), count=5000):   # buckets the recount has none for too
        parsed = keys.parse_brand_key(key.decode())
        if parsed:
            minutes.add(parsed)
    buckets = sorted((b, m, label) for b, m in minutes for label in labels)
    a = TermAudit(buckets=len(buckets), terms=sum(c.total() for c in expected.values()))
    for bucket, stored in zip(buckets, _read(r, [keys.terms(*_bml(bucket)) for bucket in buckets])):
        _compare(a, bucket, stored, expected.get(bucket, collections.Counter()))
    _audit_hours(a, r, settings, {(b, hour_of(m)) for b, m in minutes})
    return a


def _bml(bucket: Bucket) -> tuple[str, str, str]:
    brand, minute, label = bucket
    return brand, label, minute


def _compare(a: TermAudit, bucket: Bucket, stored: collections.Counter, expected: collections.Counter) -> None:
    kept = {t: n for t, n in stored.items() if t != OTHER}
    rest = expected.total() - sum(expected.get(t, 0) for t in kept)
    for term, n, want in [*((t, n, expected.get(t, 0)) for t, n in kept.items()), (OTHER, stored.get(OTHER, 0), rest)]:
        diff = n - want
        a.over += max(diff, 0)
        a.under += max(-diff, 0)
        if diff and len(a.mismatches) < 5:
            a.mismatches.append((*bucket, term, n, want))


def _audit_hours(a: TermAudit, r, settings: Settings, hours: set[tuple[str, str]]) -> None:
    """Each rolled-up hour (one with a generation and no rollup pending) against the sum of its minutes."""
    keys, labels = settings.keys, driver_labels(settings)
    for brand, hour in sorted(hours):
        if not r.exists(keys.hour_rolled(brand, hour)) or r.zscore(keys.rollup_due, f"{hour}:{brand}") is not None:
            continue
        a.hours += 1
        stored = _read(r, [keys.hour(brand, hour), *(keys.hour_terms(brand, lb, hour) for lb in labels)])
        minutes = [_read(r, [keys.brand(brand, m), *(keys.terms(brand, lb, m) for lb in labels)])
                   for m in hour_minutes(hour)]
        sums = [sum((m[i] for m in minutes), collections.Counter()) for i in range(1 + len(labels))]
        want = [sums[0], *(collections.Counter(top_terms(c, settings.drivers.terms_per_hour)) for c in sums[1:])]
        a.hours_off += stored != want
