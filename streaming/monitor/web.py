"""The operators' view, served by the worker's own web server (faust web views on aiohttp).

``register_web(app, settings)`` adds, when ``settings.web_enabled``:

* ``/`` (+ ``/app.js``, ``/style.css``): the live dashboard, plain files shipped in ``streaming/dashboard``;
* ``/api/brands?minutes=60``: per-brand label counts per minute from the Redis buckets;
* ``/api/recent``: the newest results this worker heard on the live channel;
* ``/api/alerts``: the newest sentiment-shift alerts (Redis list);
* ``/api/stats``: throughput, DLQ counts and rate, model version;
* ``/events``: server-sent events (``result``, ``alert``, ``stats``) fed from the ``{prefix}live`` channel;
* ``/metrics``: Prometheus text format from ``affectstream.streaming.worker.metrics``;
* ``/healthz``.

A ``LiveHub`` subscribes to the live channels once per worker and fans out to the SSE clients; it also
keeps the brand index (``{prefix}brands``: a sorted set brand -> newest data minute, epoch ms) and the
set of brand-minutes that changed, which the alert timer evaluates every ``ALERT_INTERVAL_S`` (event
time: a backfill or a lagging consumer is judged by the minutes its posts were written in). Every
web-enabled worker runs the timer; ``affectstream.streaming.monitor.alerts.claim_alert`` makes sure only one fires.

Throughput counts results on the live channel (every worker's); the DLQ figures and stage counters come
from this worker's Prometheus registry (scrape every worker's ``/metrics`` for the cluster view).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from importlib import resources

import faust
import orjson
from aiohttp import web as aioweb

from affectstream.streaming.worker import metrics
from affectstream.streaming.monitor.alerts import AlertRule, claim_alert, detect_shift, make_alert, windows_for
from affectstream.streaming.worker.redis_client import async_redis
from affectstream.streaming.worker.redis_keys import (ALL_BRANDS, counted_brands, event_ms, minute_bucket, minute_ms,
                                                      minute_range)
from affectstream.streaming.worker.settings import Settings

log = logging.getLogger("affectstream.web")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RECENT_KEEP = 100
SSE_QUEUE = 1000
SSE_PING_S = 15.0
STATS_INTERVAL_S = 2.0
ALERT_INTERVAL_S = 2.0
RATE_WINDOW_S = 10.0
MAX_MINUTES = 24 * 60
FUTURE_SLACK_MS = 5 * 60_000   # a created_at further in the future does not move the dashboard's clock
ASSETS = {"index.html": "text/html", "app.js": "application/javascript", "style.css": "text/css"}


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
        self._task: asyncio.Task | None = None
        self._stats_prev: tuple[float, float, float] | None = None  # (t, results, dlq) local
        self._local_rates = (0.0, 0.0)

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            self._client = async_redis(self.settings)
        return self._client

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
                result = orjson.loads(data)
            except orjson.JSONDecodeError:
                return
            self._on_result(result)
        self.broadcast(kind, data)

    def _on_result(self, result: dict) -> None:
        self.recent.append(result)
        self.model_version = result.get("model") or self.model_version
        second = int(time.monotonic())
        if self._arrivals and self._arrivals[-1][0] == second:
            self._arrivals[-1] = (second, self._arrivals[-1][1] + 1)
        else:
            self._arrivals.append((second, 1))
        ms = event_ms(result.get("created_at"), result.get("processed_at") or _now_ms())
        minute = minute_bucket(ms)
        for brand in counted_brands(result.get("brands", [])):
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
            await self.client.expire(key, self.settings.bucket_ttl_s)

    async def flush_index(self) -> None:
        if not self._index:
            return
        pending, self._index = self._index, {}
        key = self.settings.keys.brands
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zadd(key, pending, gt=True)
                pipe.expire(key, self.settings.bucket_ttl_s)
                await pipe.execute()
        except Exception as e:  # noqa: BLE001 - retried at the next flush
            for brand, ms in pending.items():
                self._index[brand] = max(ms, self._index.get(brand, 0))
            log.warning("brand index update failed (%s)", type(e).__name__)

    # --- queries ----------------------------------------------------------------------------------

    async def brands(self, minutes: int = 60, end: str | None = None) -> dict:
        """Label counts per minute for every brand seen in the ``minutes`` ending at ``end`` (default: the
        newest minute with data, so a replayed or historical stream still shows up)."""
        await self.flush_index()
        s = self.settings
        index = {k.decode(): int(v) for k, v in await self.client.zrange(s.keys.brands, 0, -1, withscores=True)}
        if end is None:
            newest = index.get(ALL_BRANDS)
            end = minute_bucket(newest if newest is not None else _now_ms())
        minute_list = minute_range(end, minutes)
        start_ms = minute_ms(minute_list[0])
        names = sorted(b for b, ms in index.items() if ms >= start_ms)
        async with self.client.pipeline(transaction=False) as pipe:
            for brand in names:
                for minute in minute_list:
                    pipe.hgetall(s.keys.brand(brand, minute))
            raw = await pipe.execute()
        labels: set[str] = set()
        out: dict[str, dict] = {}
        for i, brand in enumerate(names):
            buckets = [{k.decode(): int(v) for k, v in h.items()}
                       for h in raw[i * len(minute_list):(i + 1) * len(minute_list)]]
            for b in buckets:
                labels.update(b)
            totals: collections.Counter = collections.Counter()
            for b in buckets:
                totals.update(b)
            out[brand] = {"counts": buckets, "total": dict(totals)}
        order = [lbl for lbl in ("positive", "neutral", "negative") if lbl in labels]
        order += sorted(labels - set(order))
        return {"end": end, "minutes": minute_list, "labels": order or ["positive", "neutral", "negative"],
                "brands": {b: out[b] for b in names if b != ALL_BRANDS},
                "all": out.get(ALL_BRANDS, {"counts": [{} for _ in minute_list], "total": {}})}

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
        """Evaluate every brand-minute that received results since the last call; ``send(alert)`` each
        alert this worker won (``claim_alert``)."""
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
            buckets = [{k.decode(): int(v) for k, v in h.items()} for h in raw[pos:pos + span]]
            pos += span
            shift = detect_shift(buckets[:n_window], buckets[n_window:], rule)
            if not shift.fired:
                continue
            alert = make_alert(brand, minute, shift, rule, _now_ms())
            ttl = max(s.bucket_ttl_s, 60 * rule.cooldown_minutes)
            if await claim_alert(self.client, s.keys, alert, rule, ttl):
                log.warning("ALERT brand=%s minute=%s %s share %.2f (baseline %.2f) n=%d z=%.1f", brand, minute,
                            rule.label, shift.share, shift.baseline_share, shift.n, shift.z)
                await send(alert)
                fired.append(alert)
        return fired


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


def _asset(name: str) -> bytes:
    return resources.files("affectstream.streaming.monitor.dashboard").joinpath(name).read_bytes()


def _int_arg(request, name: str, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(request.query.get(name, default))))
    except ValueError:
        return default


# --- registration ---------------------------------------------------------------------------------

def register_web(app: faust.App, settings: Settings, rule: AlertRule = AlertRule()) -> LiveHub:
    """Attach the dashboard, the JSON API, SSE, ``/metrics`` and the alert timer to ``app``."""
    hub = LiveHub(settings, rule)
    app.affect_hub = hub  # type: ignore[attr-defined]
    alerts_topic = app.affect_topics["alerts"]  # type: ignore[attr-defined]

    def no_cache(response):
        response.headers["Cache-Control"] = "no-store"
        return response

    for name, content_type in ASSETS.items():
        path = "/" if name == "index.html" else "/" + name

        def make(name=name, content_type=content_type):
            async def get(self, request):
                return no_cache(self.bytes(_asset(name), content_type=content_type))
            return get

        app.page(path, name=f"dashboard_{name.replace('.', '_')}")(
            type(f"Asset_{name.replace('.', '_')}", (faust.web.View,), {"get": make()}))

    @app.page("/metrics", name="metrics")
    class Metrics(faust.web.View):
        async def get(self, request):
            return aioweb.Response(body=metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    @app.page("/healthz", name="healthz")
    class Health(faust.web.View):
        async def get(self, request):
            return self.json({"ok": True})

    @app.page("/api/brands", name="api_brands")
    class Brands(faust.web.View):
        async def get(self, request):
            minutes = _int_arg(request, "minutes", 60, 1, MAX_MINUTES)
            end = request.query.get("end")
            if end is not None and not (len(end) == 12 and end.isdigit()):
                return self.json({"error": "end must be YYYYMMDDHHMM"}, status=400)
            return no_cache(self.json(await hub.brands(minutes, end)))

    @app.page("/api/recent", name="api_recent")
    class Recent(faust.web.View):
        async def get(self, request):
            limit = _int_arg(request, "limit", 50, 1, RECENT_KEEP)
            return no_cache(self.json(list(hub.recent)[-limit:][::-1]))

    @app.page("/api/alerts", name="api_alerts")
    class Alerts(faust.web.View):
        async def get(self, request):
            return no_cache(self.json(await hub.alerts(_int_arg(request, "limit", 50, 1, 200))))

    @app.page("/api/stats", name="api_stats")
    class Stats(faust.web.View):
        async def get(self, request):
            return no_cache(self.json(hub.stats()))

    @app.page("/events", name="events")
    class Events(faust.web.View):
        async def get(self, request):
            response = aioweb.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
            await response.prepare(request)
            q = hub.subscribe()
            try:
                with contextlib.suppress(ConnectionResetError, RuntimeError):  # the browser went away
                    await response.write(b"retry: 2000\n\nevent: stats\ndata: " + orjson.dumps(hub.stats()) + b"\n\n")
                    while True:
                        try:
                            frame = await asyncio.wait_for(q.get(), SSE_PING_S)
                        except asyncio.TimeoutError:
                            frame = b": ping\n\n"
                        if frame is None:
                            break
                        await response.write(frame)
            finally:
                hub.unsubscribe(q)
            return response

    @app.task
    async def _start_hub() -> None:
        await hub.start()

    @app.timer(STATS_INTERVAL_S)
    async def _stats_tick() -> None:
        if hub.clients:
            hub.broadcast("stats", orjson.dumps(hub.stats()))
        await hub.flush_index()

    async def send_alert(alert: dict) -> None:
        await alerts_topic.send(key=alert["brand"].encode(), value=orjson.dumps(alert))

    @app.timer(ALERT_INTERVAL_S)
    async def _alert_tick() -> None:
        try:
            await hub.evaluate_alerts(send_alert)
        except Exception as e:  # noqa: BLE001 - Redis or broker hiccup: the next tick tries again
            log.warning("alert evaluation failed (%s: %s)", type(e).__name__, e)

    @app.on_before_shutdown.connect
    async def _stop_hub(app: faust.App, **kwargs) -> None:
        await hub.stop()

    return hub


def main() -> None:
    """``python -m affectstream.streaming.monitor.web``: a monitor process — dashboard, API, ``/metrics`` and the alert timer, no
    agents and no model — configured by ``AFFECTSTREAM_*`` variables. It joins its own consumer group
    (``<app_id>-monitor``), so starting or stopping it never rebalances the processing workers."""
    import sys

    from affectstream.streaming.worker.app import create_app

    settings = Settings.load({"web_enabled": True})
    settings = settings.replace(app_id=settings.app_id + "-monitor")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    print(f"affectstream monitor: dashboard on port {settings.web_port}", file=sys.stderr)
    faust.Worker(create_app(settings, "monitor"), loglevel="info", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
