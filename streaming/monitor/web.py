"""The operators' view on a faust worker's web server (faust web views on aiohttp).

``register_web(app, settings)`` adds, when ``settings.web.enabled``:

* ``/`` (+ ``/app.js``, ``/style.css``): the live dashboard, plain files shipped in ``monitor/dashboard``;
* ``/api/brands?minutes=60[&end=…&limit=…&offset=…]``: per-brand label counts per minute from the Redis
  buckets, the most recently active brands first, capped (``hub.BRANDS_PER_QUERY`` brands a page,
  ``hub.MAX_BUCKET_READS`` buckets a request);
* ``/api/drivers?brand=…&minutes=60[&end=…]``: the brand's driver terms for the window against the one
  before it, per driver label, with example posts (``drivers``; 1 h from minute buckets, 24 h and 7 d
  from the hour buckets the rollup timer keeps every ``ROLLUP_INTERVAL_S``: ``rollup``);
* ``/api/recent``: the newest results this process heard on the live channel;
* ``/api/alerts``: the newest sentiment-shift alerts (Redis list);
* ``/api/stats``: throughput, DLQ counts and rate, model version;
* ``/events``: server-sent events (``result``, ``alert``, ``stats``) fed from the live channels (at most
  ``MAX_SSE_CLIENTS`` at once);
* ``/metrics``: Prometheus text format from ``affectstream.streaming.worker.metrics``;
* ``/healthz`` (never behind the token);
* ``/api/feedback`` (GET the newest corrections, POST one), ``/api/post``, ``/api/shadow``: analysts'
  corrections and the candidate model's agreement (``feedback_web``);

all of it behind ``settings.web.auth_token`` when one is set (``auth``: a bearer header, or a session cookie
the browser gets by opening ``/?token=…`` once);

and the timers: stats to the SSE clients and the brand index to Redis every ``STATS_INTERVAL_S``, alert
evaluation and the resending of unacknowledged alerts every ``ALERT_INTERVAL_S`` (every web-enabled worker
runs it; ``alerts.AlertOutbox.claim`` makes sure only one fires; the topic gets each alert at least once,
keyed by its id). The live state behind the views is ``hub.LiveHub``.

A dedicated monitor process is ``affectstream worker --role monitor``: no agents, no model, and
``monitor_settings`` puts it in its own consumer group, so starting or stopping it never rebalances the
processing workers.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import resources

import faust
import orjson
from aiohttp import web as aioweb

from affectstream.streaming.monitor.alerts import AlertRule
from affectstream.streaming.monitor.auth import token_middleware
from affectstream.streaming.monitor.drivers import newest_minute
from affectstream.streaming.monitor.feedback_web import register_feedback_web
from affectstream.streaming.monitor.hub import BRANDS_PER_QUERY, RECENT_KEEP, STATS_INTERVAL_S, LiveHub
from affectstream.streaming.worker import metrics
from affectstream.streaming.worker.feedback import MONITOR_GROUP_SUFFIX
from affectstream.streaming.worker.redis_keys import is_minute
from affectstream.streaming.worker.settings import Settings

log = logging.getLogger("affectstream.web")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SSE_PING_S = 15.0
ALERT_INTERVAL_S = 2.0
ROLLUP_INTERVAL_S = 10.0
MAX_DRIVER_MINUTES = 7 * 24 * 60
MAX_MINUTES = 24 * 60
MAX_SSE_CLIENTS = 64          # open /events streams per worker; more get 503
ALERT_SEND_TIMEOUT_S = 10.0   # an alert send not acknowledged by then is retried at a later tick
ASSETS = {"index.html": "text/html", "app.js": "application/javascript", "feedback.js": "application/javascript",
          "drivers.js": "application/javascript", "style.css": "text/css"}
MONITOR_APP_SUFFIX = MONITOR_GROUP_SUFFIX  # the monitor's consumer group: <app_id>-monitor


def monitor_settings(settings: Settings) -> Settings:
    """Settings of a monitor process (``--role monitor``): web on, its own consumer group."""
    return settings.replace(app_id=settings.kafka.app_id + MONITOR_APP_SUFFIX, web_enabled=True)


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
    if settings.web.auth_token:  # every route, faust's own included; off loopback create_app insists on it
        app.web.web_app.middlewares.append(token_middleware(settings.web.auth_token))

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

    register_feedback_web(app, settings, hub)

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
            limit = _int_arg(request, "limit", BRANDS_PER_QUERY, 1, BRANDS_PER_QUERY)
            offset = _int_arg(request, "offset", 0, 0, 1_000_000)
            end = request.query.get("end")
            if end is not None and not is_minute(end):
                return self.json({"error": "end must be YYYYMMDDHHMM"}, status=400)
            return no_cache(self.json(await hub.brands(minutes, end, limit, offset)))

    @app.page("/api/drivers", name="api_drivers")
    class Drivers(faust.web.View):
        async def get(self, request):
            brand = request.query.get("brand", "")
            end = request.query.get("end")
            if not brand or len(brand) > 256:
                return self.json({"error": "brand is required"}, status=400)
            if end is not None and not is_minute(end):
                return self.json({"error": "end must be YYYYMMDDHHMM"}, status=400)
            minutes = _int_arg(request, "minutes", 60, 1, MAX_DRIVER_MINUTES)
            end = end or await newest_minute(hub.client, settings, brand, int(time.time() * 1000))
            return no_cache(self.json(await hub.drivers.drivers(brand, minutes, end)))

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
            if len(hub.clients) >= MAX_SSE_CLIENTS:
                return self.json({"error": "too many live clients"}, status=503)
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
        # key: the alert id, stable across resends, so consumers can drop the repeats at-least-once allows
        delivery = await alerts_topic.send(key=alert["id"].encode(), value=orjson.dumps(alert))
        await asyncio.wait_for(asyncio.shield(delivery), ALERT_SEND_TIMEOUT_S)  # the broker's acknowledgement

    @app.timer(ALERT_INTERVAL_S)
    async def _alert_tick() -> None:
        try:
            await hub.evaluate_alerts(send_alert)
        except Exception as e:  # noqa: BLE001 - Redis or broker hiccup: the next tick tries again
            log.warning("alert evaluation failed (%s: %s)", type(e).__name__, e)

    @app.timer(ROLLUP_INTERVAL_S)
    async def _rollup_tick() -> None:
        try:
            await hub.drivers.rollup.run_due(int(time.time() * 1000))
        except Exception as e:  # noqa: BLE001 - Redis hiccup: the due hours stay due for the next tick
            log.warning("hour rollup failed (%s: %s)", type(e).__name__, e)

    @app.on_before_shutdown.connect
    async def _stop_hub(app: faust.App, **kwargs) -> None:
        await hub.stop()

    return hub
