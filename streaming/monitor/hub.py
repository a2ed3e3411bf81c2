"""The live state behind the operators' view: one Redis subscription per process, fanned out to the
dashboard's SSE clients, plus the recent feed, the brand index, the JSON queries and alert evaluation.

``LiveHub`` subscribes to the live channels (``settings.keys.live`` for results, ``.live_alerts`` for
alerts) and keeps:

* the newest results heard (``/api/recent``) and the arrival rate (``/api/stats``);
* the brand index (``settings.keys.brands``: a sorted set brand -> newest data minute, epoch ms), so the
  per-brand query reads only brands with data in its window;
* the set of brand-minutes that changed, which ``evaluate_alerts`` judges (event time: a backfill or a
  lagging consumer is judged by the minutes its posts were written in), each alert with its drivers
  (``DriverReader.explain``); ``AlertOutbox.claim`` lets exactly one process fire, and ``deliver_due``
  resends alerts whose send was not acknowledged (at least once).

Throughput counts results on the live channel (every worker's); the DLQ figures and stage counters come
from this process's Prometheus registry (scrape every worker's ``/metrics`` for the cluster view).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time

import orjson

from affectstream.streaming.monitor.alerts import AlertOutbox, AlertRule, detect_shift, make_alert, windows_for
from affectstream.streaming.monitor.drivers import DriverReader
from affectstream.streaming.worker import metrics
from affectstream.streaming.worker.redis_client import async_redis
from affectstream.streaming.worker.redis_keys import ALL_BRANDS, event_ms, minute_bucket, minute_ms, minute_range
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings

log = logging.getLogger("affectstream.web")

RECENT_KEEP = 100
SSE_QUEUE = 1000
STATS_INTERVAL_S = 2.0
RATE_WINDOW_S = 10.0
FUTURE_SLACK_MS = 5 * 60_000   # a created_at further in the future does not move the dashboard's clock
LABEL_ORDER = ("positive", "neutral", "negative")
BRANDS_PER_QUERY = 50          # brands one /api/brands page lists at most (the most recently active first)
MAX_BUCKET_READS = 60 * (BRANDS_PER_QUERY + 1)  # HGETALLs one /api/brands request makes at most (an hour: 50 brands)


def _now_ms() -> int:
    return int(time.time() * 1000)


class LiveHub:
    """One Redis subscription per worker -> SSE clients, the recent feed, the brand index, dirty minutes."""

    def __init__(self, settings: Settings, rule: AlertRule = AlertRule()):
        self.settings = settings
        self.rule = rule
        self.recent: collections.deque = collections.deque(maxlen=RECENT_KEEP)
        self.clients: set[asyncio.Queue] = set()
        self.model_version = ""
        self.dirty: set[tuple[str, str]] = set()          # (brand, minute) with new results
        self._index: dict[str, int] = {}                  # brand -> newest data ms, not yet in Redis
        self._arrivals: collections.deque = collections.deque()  # (monotonic second, count)
        self._client = None
        self._outbox: AlertOutbox | None = None
        self._drivers: DriverReader | None = None
        self._task: asyncio.Task | None = None
        self._stats_prev: tuple[float, float, float] | None = None  # (t, results, dlq) local
        self._local_rates = (0.0, 0.0)

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            self._client = async_redis(self.settings)
        return self._client

    @property
    def outbox(self) -> AlertOutbox:
        if self._outbox is None:
            self._outbox = AlertOutbox(self.client, self.settings.keys)
        return self._outbox

    @property
    def drivers(self) -> DriverReader:
        if self._drivers is None:
            self._drivers = DriverReader(self.client, self.settings)
        return self._drivers

    async def start(self) -> None:
        if self._task is None:
            await self._seed_index()
            self._task = asyncio.ensure_future(self._listen())

    async def stop(self) -> None:
        for q in list(self.clients):
            _offer(q, None)  # ends every SSE response, so the web server can stop at once
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _listen(self) -> None:
        s = self.settings
        channels = (s.keys.live, s.keys.live_alerts)
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(*channels)
                log.info("dashboard hub subscribed to %s", ", ".join(channels))
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    channel = message["channel"].decode()
                    self.on_message("result" if channel == channels[0] else "alert", message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis restarts: resubscribe
                log.warning("live channel subscription lost (%s: %s); retrying in 1s", type(e).__name__, e)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # --- messages -------------------------------------------------------------------------------

    def on_message(self, kind: str, data: bytes) -> None:
        if kind == "result":
            try:
                raw = orjson.loads(data)
                result = Result.from_dict(raw)
            except (orjson.JSONDecodeError, TypeError, AttributeError):  # not a Result: not shown
                return
            self._on_result(result, raw)
        self.broadcast(kind, data)

    def _on_result(self, result: Result, raw: dict) -> None:
        self.recent.append(raw)  # served as published, fields of newer producers included
        self.model_version = result.model or self.model_version
        second = int(time.monotonic())
        if self._arrivals and self._arrivals[-1][0] == second:
            self._arrivals[-1] = (second, self._arrivals[-1][1] + 1)
        else:
            self._arrivals.append((second, 1))
        ms = event_ms(result.created_at, result.processed_at or _now_ms())
        minute = minute_bucket(ms)
        for brand in result.bucket_labels(self.settings.brands.untargeted):  # the buckets the sink counted it in
            if brand != ALL_BRANDS:
                self.dirty.add((brand, minute))
            if ms <= _now_ms() + FUTURE_SLACK_MS and ms > self._index.get(brand, -1):
                self._index[brand] = ms

    def broadcast(self, kind: str, data: bytes) -> None:
        frame = b"event: " + kind.encode() + b"\ndata: " + data.replace(b"\n", b"") + b"\n\n"
        for q in list(self.clients):
            if not _offer(q, frame):
                log.warning("dashboard client too slow; disconnecting it")
                self.clients.discard(q)
                _offer(q, None, force=True)

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=SSE_QUEUE)
        self.clients.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.clients.discard(q)

    # --- brand index ------------------------------------------------------------------------------

    async def _seed_index(self) -> None:
        """First start on a Redis that already holds buckets: build the index once with SCAN."""
        key = self.settings.keys.brands
        if await self.client.exists(key):
            return
        keys = self.settings.keys
        found: dict[str, int] = {}
        async for raw in self.client.scan_iter(match=keys.brand_pattern(), count=1000):
            parsed = keys.parse_brand_key(raw.decode())
            if parsed is None:
                continue
            brand, ms = parsed[0], minute_ms(parsed[1])
            if ms <= _now_ms() + FUTURE_SLACK_MS:
                found[brand] = max(found.get(brand, 0), ms)
        if found:
            await self.client.zadd(key, found, gt=True)
            await self.client.expire(key, self.settings.redis.bucket_ttl_s)

    async def flush_index(self) -> None:
        if not self._index:
            return
        pending, self._index = self._index, {}
        key = self.settings.keys.brands
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zadd(key, pending, gt=True)
                pipe.expire(key, self.settings.redis.bucket_ttl_s)
                await pipe.execute()
        except Exception as e:  # noqa: BLE001 - retried at the next flush
            for brand, ms in pending.items():
                self._index[brand] = max(ms, self._index.get(brand, 0))
            log.warning("brand index update failed (%s)", type(e).__name__)

    # --- queries ----------------------------------------------------------------------------------

    async def brands(self, minutes: int = 60, end: str | None = None, limit: int = BRANDS_PER_QUERY,
                     offset: int = 0) -> dict:
        """Label counts per minute for the brands with data in the ``minutes`` ending at ``end`` (default: the
        newest minute with data, so a replayed or historical stream still shows up).

        Brand names come from posts, so the cost is capped: brands are listed by recent activity (newest
        data minute first, then name), ``limit`` per page from ``offset``, and never more than
        ``MAX_BUCKET_READS`` minute buckets (one HGETALL each, the all-brands row included) per request, so a
        long window lists fewer brands. ``brands_total`` and ``next_offset`` tell a client what was left out."""
        await self.flush_index()
        s = self.settings
        key = s.keys.brands
        if end is None:
            newest = await self.client.zscore(key, ALL_BRANDS)
            end = minute_bucket(int(newest) if newest is not None else _now_ms())
        minute_list = minute_range(end, minutes)
        start_ms = minute_ms(minute_list[0])
        limit = max(0, min(limit, BRANDS_PER_QUERY, MAX_BUCKET_READS // len(minute_list) - 1))
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zcount(key, start_ms, "+inf")
            pipe.zrevrank(key, ALL_BRANDS)
            pipe.zscore(key, ALL_BRANDS)
            total, all_rank, all_ms = await pipe.execute()
        has_all = all_rank is not None and all_ms is not None and all_ms >= start_ms
        total -= 1 if has_all else 0
        # the all-brands row sits somewhere in the same order: skip over it so pages neither repeat nor miss
        first = offset + (1 if has_all and all_rank < offset else 0)
        page = await self.client.zrevrangebyscore(key, "+inf", start_ms, start=first, num=limit + 1) if limit else []
        names = [n for n in (p.decode() for p in page) if n != ALL_BRANDS][:limit]
        rows = names + [ALL_BRANDS]
        async with self.client.pipeline(transaction=False) as pipe:
            for brand in rows:
                for minute in minute_list:
                    pipe.hgetall(s.keys.brand(brand, minute))
            raw = await pipe.execute()
        labels: set[str] = set()
        out: dict[str, dict] = {}
        for i, brand in enumerate(rows):
            buckets = [_counts(h) for h in raw[i * len(minute_list):(i + 1) * len(minute_list)]]
            for b in buckets:
                labels.update(b)
            totals: collections.Counter = collections.Counter()
            for b in buckets:
                totals.update(b)
            out[brand] = {"counts": buckets, "total": dict(totals)}
        order = [lbl for lbl in LABEL_ORDER if lbl in labels]
        order += sorted(labels - set(order))
        following = offset + len(names)
        return {"end": end, "minutes": minute_list, "labels": order or list(LABEL_ORDER),
                "brands": {b: out[b] for b in sorted(names)}, "all": out[ALL_BRANDS],
                "brands_total": total, "offset": offset, "limit": limit,
                "next_offset": following if following < total else None}

    async def alerts(self, limit: int = 50) -> list[dict]:
        raw = await self.client.lrange(self.settings.keys.alerts, 0, limit - 1)
        return [orjson.loads(r) for r in raw]

    def stats(self) -> dict:
        """Throughput (every worker's results, from the live channel) and this worker's counters."""
        now = time.monotonic()
        while self._arrivals and self._arrivals[0][0] < now - RATE_WINDOW_S:
            self._arrivals.popleft()
        live_rate = sum(n for _, n in self._arrivals) / RATE_WINDOW_S
        results = _sample("affectstream_posts_total", stage="classify", outcome="result")
        dlq_by = _dlq_by_reason()
        dlq = sum(dlq_by.values())
        if self._stats_prev is None or now - self._stats_prev[0] >= STATS_INTERVAL_S:
            if self._stats_prev is not None:
                dt = now - self._stats_prev[0]
                self._local_rates = ((results - self._stats_prev[1]) / dt, (dlq - self._stats_prev[2]) / dt)
            self._stats_prev = (now, results, dlq)
        return {
            "results_per_s": round(live_rate, 2),
            "model": self.model_version or _model_version(),
            "worker": {"host": socket.gethostname(), "pid": os.getpid(),
                       "results": int(results), "dlq": int(dlq), "dlq_by_reason": dlq_by,
                       "dlq_share": round(dlq / (results + dlq), 4) if results + dlq else 0.0,
                       "results_per_s": round(self._local_rates[0], 2),
                       "dlq_per_s": round(self._local_rates[1], 2)},
            "clients": len(self.clients),
            "at": _now_ms(),
        }

    # --- alerts -----------------------------------------------------------------------------------

    async def evaluate_alerts(self, send) -> list[dict]:
        """Send the queued alerts that are due (an earlier send failed, or its worker died), then evaluate
        every brand-minute that received results since the last call and send each alert this worker won
        (``AlertOutbox.claim``). ``send(alert)`` must return only once the broker acknowledged the message; an
        alert leaves the outbox only then. Returns the alerts this call fired."""
        await self.deliver_due(send)
        if not self.dirty:
            return []
        pending, self.dirty = self.dirty, set()
        s, rule = self.settings, self.rule
        plans = []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for brand, minute in sorted(pending):
                    window, baseline = windows_for(minute, rule)
                    plans.append((brand, minute, len(window)))
                    for m in window + baseline:
                        pipe.hgetall(s.keys.brand(brand, m))
                raw = await pipe.execute()
        except BaseException:
            self.dirty |= pending  # evaluated again at the next tick
            raise
        fired = []
        pos = 0
        span = rule.window_minutes + rule.baseline_minutes
        for brand, minute, n_window in plans:
            buckets = [_counts(h) for h in raw[pos:pos + span]]
            pos += span
            shift = detect_shift(buckets[:n_window], buckets[n_window:], rule)
            if not shift.fired:
                continue
            alert = await self.drivers.explain(make_alert(brand, minute, shift, rule, _now_ms()), rule)
            ttl = max(s.redis.bucket_ttl_s, 60 * rule.cooldown_minutes)
            message = await self.outbox.claim(alert, rule, ttl, _now_ms())
            if message is not None:
                log.warning("ALERT brand=%s minute=%s %s share %.2f (baseline %.2f) n=%d z=%.1f", brand, minute,
                            rule.label, shift.share, shift.baseline_share, shift.n, shift.z)
                await self._deliver(send, message)
                fired.append(alert)
        return fired

    async def deliver_due(self, send) -> int:
        """Send the outbox's due alerts (``take_due`` leases them to this worker); returns how many the
        broker acknowledged."""
        delivered = 0
        for message in await self.outbox.take_due(_now_ms()):
            delivered += await self._deliver(send, message)
        return delivered

    async def _deliver(self, send, message: bytes) -> bool:
        alert = orjson.loads(message)
        try:
            await send(alert)
        except Exception as e:  # noqa: BLE001 - the broker is away: the alert stays queued for the next tick
            log.warning("alert %s not delivered (%s: %s); retrying at the next tick", alert.get("id"),
                        type(e).__name__, e)
            with contextlib.suppress(Exception):  # if Redis is away too, the lease runs out instead
                await self.outbox.send_failed(message)
            return False
        await self.outbox.sent(message)
        return True


def _counts(bucket: dict) -> dict[str, int]:
    """A minute bucket as Redis returns it (bytes label -> bytes count) -> {label: count}."""
    return {k.decode(): int(v) for k, v in bucket.items()}


def _offer(q: asyncio.Queue, item, force: bool = False) -> bool:
    try:
        q.put_nowait(item)
        return True
    except asyncio.QueueFull:
        if force:
            with contextlib.suppress(asyncio.QueueEmpty, asyncio.QueueFull):
                q.get_nowait()
                q.put_nowait(item)
        return False


def _sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _dlq_by_reason() -> dict[str, int]:
    out: dict[str, int] = {}
    for family in metrics.REGISTRY.collect():
        if family.name != "affectstream_dlq":
            continue
        for sample in family.samples:
            if sample.name == "affectstream_dlq_total" and sample.value:
                key = f"{sample.labels['stage']}/{sample.labels['reason']}"
                out[key] = out.get(key, 0) + int(sample.value)
    return out


def _model_version() -> str:
    for family in metrics.REGISTRY.collect():
        if family.name == "affectstream_model_info":
            for sample in family.samples:
                if sample.value:
                    return sample.labels["version"]
    return ""
