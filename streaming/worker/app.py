"""The faust app: broker connection, topics, and the agents a worker role runs.

``create_app(settings, role)`` builds a fresh app for one worker process. Both agents live in the same
app id (so the same consumer group); a worker registers only the agents of its role, and faust's
assignor gives each topic's partitions to the members subscribed to it. So a GPU box can run
``--role caption`` and a few CPU boxes ``--role classify``, and each side scales by adding workers.

Messages are raw bytes on the wire: we encode and decode JSON with orjson ourselves (docs/contracts.md), so a
malformed message reaches our code — and the dead-letter topic — instead of dying in a codec.
"""
from __future__ import annotations

import ipaddress
import socket
import tempfile
from pathlib import Path
from typing import Iterable

import faust

from affectstream.streaming.worker import faust_compat
from affectstream.streaming.worker.kafka_config import broker_credentials, broker_urls, topic_names
from affectstream.streaming.worker.settings import KafkaSettings, Settings

# How long the broker may hold a consumer's fetch when it has no new data (aiokafka ``fetch_max_wait_ms``).
# faust hard-codes 1500 ms, and Tansu does not answer a waiting fetch when data arrives: it holds it for
# up to about half of that wait whatever is produced meanwhile, so at 1500 that wait was the end-to-end
# latency floor. Shorter waits cost empty fetches while idle; 50 ms keeps the added latency under ~25 ms
# (docs/performance.md, "Fetch wait", has the sweep). ``settings.kafka.fetch_max_wait_ms`` overrides it per
# worker (a Kafka broker answers as soon as data arrives, so there it only sets how often an idle consumer
# asks).
FETCH_MAX_WAIT_MS = KafkaSettings.fetch_max_wait_ms

ROLES = ("caption", "classify", "all", "monitor")  # monitor: no agents; the CLI adds web + alerts
WILDCARD_BINDS = ("0.0.0.0", "::", "")


class WebExposureError(ValueError):
    """The web server would listen off loopback without ``web_auth_token``."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


def check_web_exposure(settings: Settings) -> None:
    """Refuse a web server bound off loopback without a token: the dashboard, API, SSE and /metrics would be
    open to anyone who can reach the interface."""
    if settings.web.enabled and not is_loopback(settings.web.bind) and not settings.web.auth_token:
        raise WebExposureError(
            f"the web server would listen on {settings.web.bind or '*'}:{settings.web.port} without "
            "authentication: set AFFECTSTREAM_WEB_AUTH_TOKEN (clients send 'Authorization: Bearer <token>'), "
            "or bind to loopback (AFFECTSTREAM_WEB_BIND=127.0.0.1)")


def _advertised_host(bind: str) -> str:
    return socket.gethostname() if bind in WILDCARD_BINDS else bind


def create_app(settings: Settings, role: str = "all", *, register: bool = True) -> faust.App:
    """A faust app for one worker process; ``register`` adds the agents for ``role``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    check_web_exposure(settings)
    faust_compat.check_faust()  # the faust internals behind the short fetch wait and the micro-batches
    app = faust_compat.new_app(
        settings.kafka.app_id,
        fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
        broker=broker_urls(settings),
        broker_credentials=broker_credentials(settings),
        key_serializer="raw",
        value_serializer="raw",
        # at least once: the idempotent producer and transactions fail on Tansu (docs/contracts.md), and we do not
        # need them — Redis effects are idempotent, so a redelivered post never counts twice.
        processing_guarantee="at_least_once",
        producer_acks=-1,
        # a short linger lets one micro-batch's records share a produce request per partition: less broker
        # CPU per post and a lower p99 (docs/performance.md, "Producer linger")
        producer_linger=settings.kafka.producer_linger_ms / 1000,
        broker_session_timeout=settings.kafka.session_timeout_s,
        broker_heartbeat_interval=settings.kafka.heartbeat_interval_s,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        # one message at most this big; images arrive inline as base64
        producer_max_request_size=settings.limits.max_message_bytes,
        consumer_max_fetch_size=settings.limits.max_message_bytes,
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        # No tables: counted state lives in Redis (Table recovery is unreliable on Tansu), and without
        # tables nothing needs the assignor's leader topic.
        topic_disable_leader=True,
        store="memory://",
        # faust makes its data folder even with nothing to keep in it: not in the working directory
        datadir=str(Path(tempfile.gettempdir()) / f"faust-{settings.kafka.app_id}-data"),
        web_enabled=settings.web.enabled,
        web_port=settings.web.port,
        web_bind=settings.web.bind,           # faust's own default is 0.0.0.0; web_host is only the advertised URL
        web_host=_advertised_host(settings.web.bind),
        # no tables here: the built-in table, router, graph and stats endpoints would only expose internals
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        autodiscover=False,
    )
    app.affect_settings = settings  # type: ignore[attr-defined]
    app.affect_topics = declare_topics(app, settings)  # type: ignore[attr-defined]
    if register:
        register_agents(app, settings, role)
    return app


def declare_topics(app: faust.App, settings: Settings) -> dict[str, faust.TopicT]:
    """The contract topics with their partition counts (faust creates missing ones on start)."""
    def topic(name: str) -> faust.TopicT:
        return app.topic(name, key_type=bytes, value_type=bytes, partitions=settings.kafka.partitions,
                         replicas=settings.kafka.replication_factor)

    return {role: topic(name) for role, name in topic_names(settings).items()}


def register_agents(app: faust.App, settings: Settings, role: str) -> list[str]:
    """Attach the agents of ``role``; imported lazily so a caption worker never loads the classifier."""
    names: list[str] = []
    roles: Iterable[str] = ("caption", "classify") if role == "all" else () if role == "monitor" else (role,)
    for r in roles:
        if r == "caption":
            from affectstream.streaming.worker.caption import register
        else:
            from affectstream.streaming.worker.classify import register
        names.append(register(app, settings))
    return names
