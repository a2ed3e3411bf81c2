"""Why a brand's sentiment moved: the terms that drive its negative (or positive) posts in a window against
the window before it (``fightin_words``), with example posts, for ``/api/drivers``, the dashboard and every
alert (docs/drivers.md).

A label's drivers compare its posts' terms in the window with its posts' terms in the baseline; a
baseline with fewer than ``BASELINE_POSTS_MIN`` posts of that label is replaced by the brand's other
posts (``contrast``).

Windows: up to ``MINUTE_WINDOW_MAX`` minutes are read from minute buckets (the ``minutes`` ending at
``end``, against the ``minutes`` before them); longer ones (24 h, 7 d) from hour buckets, whole UTC hours
ending with ``end``'s hour, against as many hours before them. An hour marked due for a rollup (the
current one, or one whose rollup is pending) is read from its minutes instead, so a window never misses a
post.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

from affectstream.streaming.monitor.alerts import AlertRule, alert_summary, windows_for
from affectstream.streaming.monitor.fightin_words import TermShift, drivers
from affectstream.streaming.monitor.rollup import Counts, Rollup
from affectstream.streaming.worker.driver_terms import bucket_terms, split_term
from affectstream.streaming.worker.redis_keys import hour_minutes, hour_of, hour_range, minute_bucket, minute_range
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings

log = logging.getLogger("affectstream.web")

WINDOW_MINUTES = (60, 24 * 60, 7 * 24 * 60)   # what the dashboard offers: 1 h, 24 h, 7 d
MINUTE_WINDOW_MAX = 180     # longer windows are read from hour buckets
SHOWN_LABELS = ("negative", "positive")   # labels whose drivers the API and the dashboard show
TOP = 8                     # drivers per label on the API and the dashboard
ALERT_TOP = 3               # drivers named in an alert
BASELINE_POSTS_MIN = 10     # fewer posts of a label in the baseline say too little: contrast with the rest
HOUR_WINDOW_CACHE_S = 60.0  # a 24 h / 7 d payload is reused this long (the dashboard asks every 15 s)
CACHE_MAX = 5000
EXAMPLES_PER_TERM = 3
EXAMPLE_POSTS_MAX = 300     # stored results read for examples, newest minutes first
EXAMPLE_MINUTES_MAX = 180   # examples are the newest posts: a long window's last three hours


@dataclass(frozen=True)
class Span:
    """A window and its baseline, as minute or hour bucket names, oldest first."""
    unit: str               # "minute" | "hour"
    window: list[str]
    baseline: list[str]

    @property
    def window_minutes(self) -> list[str]:
        """The window's minutes, newest first (where its example posts are looked for)."""
        minutes = self.window if self.unit == "minute" else [m for h in self.window for m in hour_minutes(h)]
        return minutes[::-1]


def span_for(end: str, minutes: int) -> Span:
    """The window of ``minutes`` ending at minute ``end`` and the baseline of as long just before it."""
    if minutes <= MINUTE_WINDOW_MAX:
        both = minute_range(end, 2 * minutes)
        return Span("minute", both[minutes:], both[:minutes])
    hours = max(1, minutes // 60)
    both = hour_range(hour_of(end), 2 * hours)
    return Span("hour", both[hours:], both[:hours])


async def newest_minute(client: Any, settings: Settings, brand: str, now_ms: int) -> str:
    """The brand's newest minute with data (the brand index), else the minute of ``now_ms``."""
    newest = await client.zscore(settings.keys.brands, brand)
    return minute_bucket(int(newest) if newest is not None else now_ms)


def contrast(window: Counts, baseline: Counts, label: str) -> tuple[dict, dict, str]:
    """The two corpora ``label``'s drivers compare: its terms in the window and in the baseline; when the
    baseline has fewer than ``BASELINE_POSTS_MIN`` posts of that label (a new brand, a calm half hour with
    one complaint), the brand's other posts instead: the baseline's of every label and the window's of the
    other labels ("what its negative posts say that its other posts did not")."""
    if baseline.posts.get(label, 0) >= BASELINE_POSTS_MIN:
        return window.terms.get(label, {}), baseline.terms.get(label, {}), "previous window"
    others: collections.Counter = collections.Counter()
    for terms in baseline.terms.values():
        others.update(terms)
    for other, terms in window.terms.items():
        if other != label:
            others.update(terms)
    return window.terms.get(label, {}), others, "the brand's other posts"


def shift_row(shift: TermShift, examples: list[dict]) -> dict:
    side, term = split_term(shift.term)
    return {"term": term, "side": side, "z": round(shift.z, 2), "count": shift.count,
            "baseline_count": shift.baseline_count, "examples": examples}


class DriverReader:
    """Reads term counts for windows and finds their drivers and example posts (one client)."""

    def __init__(self, client: Any, settings: Settings):
        self.client, self.settings, self.keys = client, settings, settings.keys
        self.rollup = Rollup(client, settings)
        self.labels = self.rollup.labels
        self._cache: dict[tuple, tuple[float, dict]] = {}   # hour-unit payloads: key -> (expires, payload)

    async def counts(self, brand: str, buckets: list[str], unit: str) -> Counts:
        if unit == "minute":
            return await self.rollup.minutes_counts(brand, buckets)
        return await self.hours_counts(brand, buckets)

    async def hours_counts(self, brand: str, hours: list[str]) -> Counts:
        """Rolled-up hours from their hour buckets; an hour marked due for a rollup (the current one, or one
        whose rollup is pending) from its minutes; any other hour has no data."""
        due = await self.client.zmscore(self.keys.rollup_due, [f"{hour}:{brand}" for hour in hours])
        unrolled = [hour for hour, score in zip(hours, due) if score is not None]
        out = await self.rollup.sum_hours(brand, [hour for hour, score in zip(hours, due) if score is None])
        if unrolled:
            rest = await self.rollup.minutes_counts(brand, [m for h in unrolled for m in hour_minutes(h)])
            out.add(rest.posts, rest.terms)
        return out

    async def examples(self, brand: str, minutes: list[str], wanted: set[tuple[str, str]]) -> dict:
        """(label, term) -> up to ``EXAMPLES_PER_TERM`` of the newest posts in ``minutes`` (newest first) that
        count that label and carry that term in ``brand``'s bucket: {id, label, words}."""
        found: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
        ids: list[str] = []
        for start in range(0, min(len(minutes), EXAMPLE_MINUTES_MAX), 60):
            async with self.client.pipeline(transaction=False) as pipe:
                for minute in minutes[start:start + 60]:
                    pipe.smembers(self.keys.counted(brand, minute))
                ids += sorted(i.decode() for members in await pipe.execute() for i in members)
            if len(ids) >= EXAMPLE_POSTS_MAX:
                break
        ids = ids[:EXAMPLE_POSTS_MAX]
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id in ids:
                pipe.get(self.keys.post(post_id))
            stored = await pipe.execute()
        for raw in stored:
            if raw is None:
                continue
            result = Result.from_json(raw)
            label = result.bucket_labels(self.settings.brands.untargeted).get(brand)
            for term in bucket_terms(result, self.settings.brands.untargeted).get(brand, ()):
                if (label, term) in wanted and len(found[(label, term)]) < EXAMPLES_PER_TERM:
                    found[(label, term)].append({"id": result.id, "label": label, "words": _words(result, brand)})
        return found

    async def drivers(self, brand: str, minutes: int, end: str, top: int = TOP) -> dict:
        """The ``/api/drivers`` payload: per driver label the window's and the baseline's posts and the
        terms that rose most, each with example posts. A 24 h or 7 d payload is reused for
        ``HOUR_WINDOW_CACHE_S`` (its hours change only by the current one)."""
        span = span_for(end, minutes)
        key, now = (brand, minutes, hour_of(end), top), time.monotonic()
        cached = self._cache.get(key) if span.unit == "hour" else None
        if cached and cached[0] > now:
            return cached[1]
        payload = await self._drivers(brand, minutes, end, top, span)
        if span.unit == "hour":
            if len(self._cache) >= CACHE_MAX:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[key] = (now + HOUR_WINDOW_CACHE_S, payload)
        return payload

    async def _drivers(self, brand: str, minutes: int, end: str, top: int, span: Span) -> dict:
        window = await self.counts(brand, span.window, span.unit)
        baseline = await self.counts(brand, span.baseline, span.unit)
        corpora = {label: contrast(window, baseline, label) for label in self.labels}
        by_label = {label: drivers(mine, theirs, top=top) for label, (mine, theirs, _) in corpora.items()
                    if label in SHOWN_LABELS}
        wanted = {(label, s.term) for label, shifts in by_label.items() for s in shifts}
        examples = await self.examples(brand, span.window_minutes, wanted) if wanted else {}
        n, n0 = sum(window.posts.values()), sum(baseline.posts.values())
        return {
            "brand": brand, "minutes": minutes, "end": end, "unit": span.unit,
            "window": [span.window[0], span.window[-1]], "baseline": [span.baseline[0], span.baseline[-1]],
            "posts": n, "baseline_posts": n0,
            "labels": {label: {"posts": window.posts.get(label, 0), "baseline_posts": baseline.posts.get(label, 0),
                               "share": round(window.posts.get(label, 0) / n, 4) if n else 0.0,
                               "baseline_share": round(baseline.posts.get(label, 0) / n0, 4) if n0 else 0.0,
                               "against": corpora[label][2],
                               "drivers": [shift_row(s, examples.get((label, s.term), [])) for s in shifts]}
                       for label, shifts in by_label.items()},
        }

    async def explain(self, alert: dict, rule: AlertRule) -> dict:
        """``alert`` with its top drivers (rule.label's terms in the alert's window against its baseline) and
        a one-line summary; the alert alone when the terms cannot be read (the alert matters more)."""
        try:
            window_minutes, baseline_minutes = windows_for(alert["minute"], rule)
            window = await self.rollup.minutes_counts(alert["brand"], window_minutes)
            baseline = await self.rollup.minutes_counts(alert["brand"], baseline_minutes)
            label = rule.label
            mine, theirs, _ = contrast(window, baseline, label)
            shifts = drivers(mine, theirs, top=ALERT_TOP)
            examples = await self.examples(alert["brand"], window_minutes[::-1], {(label, s.term) for s in shifts})
            rows = [shift_row(s, [e["id"] for e in examples.get((label, s.term), [])]) for s in shifts]
        except Exception as e:  # noqa: BLE001 - Redis hiccup: send the alert without its drivers
            log.warning("drivers for alert %s not read (%s: %s)", alert.get("id"), type(e).__name__, e)
            rows = []
        explained = {**alert, "drivers": rows}
        return {**explained, "summary": alert_summary(explained)}


def summary_drivers(settings: Settings, brands: list[str], now_ms: int, minutes: int = 60,
                    top: int = 3) -> dict[str, dict[str, list[str]]]:
    """brand -> label -> its top driver terms over the ``minutes`` ending at its newest minute (the demo's
    summary); reads Redis with a client of its own."""
    import asyncio

    from affectstream.streaming.worker.redis_client import async_redis

    async def read() -> dict[str, dict[str, list[str]]]:
        client = async_redis(settings)
        try:
            reader, out = DriverReader(client, settings), {}
            for brand in brands:
                payload = await reader.drivers(brand, minutes, await newest_minute(client, settings, brand, now_ms),
                                               top=top)
                out[brand] = {label: [d["term"] for d in info["drivers"]] for label, info in payload["labels"].items()}
            return out
        finally:
            await client.aclose()

    return asyncio.run(read())


def _words(result: Result, brand: str) -> list[dict]:
    """The rationale behind ``brand``'s label on ``result`` (its target's, else the post's)."""
    for target in result.targets:
        if isinstance(target, dict) and target.get("brand") == brand:
            return list(target.get("rationale") or [])
    return list(result.rationale)
