"""The faust app: broker connection, topics, and the agents a worker role runs.

``create_app(settings, role)`` builds a fresh app for one worker process. Both agents live in the same
app id (so the same consumer group); a worker registers only the agents of its role, and faust's
assignor gives each topic's partitions to the members subscribed to it. So a GPU box can run
``--role caption`` and a few CPU boxes ``--role classify``, and each side scales by adding workers.

Messages are raw bytes on the wire: we encode and decode JSON with orjson ourselves (DESIGN.md), so a
malformed message reaches our code — and the dead-letter topic — instead of dying in a codec.
"""
from __future__ import annotations

import ssl
from typing import Iterable

import faust

from streaming.settings import Settings

ROLES = ("caption", "classify", "all", "monitor")  # monitor: web + alerts only (python -m streaming.web)


def broker_urls(settings: Settings) -> list[str]:
    """``kafka://h1:9092,h2:9092`` or ``h1:9092`` -> faust's list of ``kafka://host:port`` URLs."""
    raw = settings.broker_url.strip()
    if "://" in raw:
        scheme, rest = raw.split("://", 1)
    else:
        scheme, rest = "kafka", raw
    hosts = [h.strip() for h in rest.replace(";", ",").split(",") if h.strip()]
    if not hosts:
        raise ValueError("broker_url is empty: start the embedded broker (demo) or pass --broker")
    return [f"{scheme}://{h}" for h in hosts]


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """SSL / SASL settings -> faust credentials (aiokafka underneath); None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol.upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    raise ValueError(f"unknown kafka_security_protocol {settings.kafka_security_protocol!r}")


def create_app(settings: Settings, role: str = "all", *, register: bool = True) -> faust.App:
    """A faust app for one worker process; ``register`` adds the agents for ``role``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    app = faust.App(
        settings.app_id,
        broker=broker_urls(settings),
        broker_credentials=broker_credentials(settings),
        key_serializer="raw",
        value_serializer="raw",
        # at least once: the idempotent producer and transactions fail on Tansu (FACTS.md), and we do not
        # need them — Redis effects are idempotent, so a redelivered post never counts twice.
        processing_guarantee="at_least_once",
        producer_acks=-1,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        # one message at most this big; images arrive inline as base64
        producer_max_request_size=settings.max_message_bytes,
        consumer_max_fetch_size=settings.max_message_bytes,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        # No tables: counted state lives in Redis (Table recovery is unreliable on Tansu), and without
        # tables nothing needs the assignor's leader topic.
        topic_disable_leader=True,
        store="memory://",
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_host="127.0.0.1" if settings.web_enabled else "localhost",
        # no tables here: the built-in table and router endpoints would only expose internals
        web_tables_enabled=False,
        web_router_enabled=False,
        autodiscover=False,
    )
    app.affect_settings = settings  # type: ignore[attr-defined]
    app.affect_topics = declare_topics(app, settings)  # type: ignore[attr-defined]
    if register:
        register_agents(app, settings, role)
        if settings.web_enabled:
            from streaming.web import register_web

            register_web(app, settings)  # dashboard, JSON API, SSE, /metrics, sentiment-shift alerts
    return app


def declare_topics(app: faust.App, settings: Settings) -> dict[str, faust.TopicT]:
    """The contract topics with their partition counts (faust creates missing ones on start)."""
    def topic(name: str) -> faust.TopicT:
        return app.topic(name, key_type=bytes, value_type=bytes, partitions=settings.partitions,
                         replicas=settings.replication_factor)

    return {
        "posts": topic(settings.topic_posts),
        "enriched": topic(settings.topic_enriched),
        "sentiment": topic(settings.topic_sentiment),
        "dlq": topic(settings.topic_dlq),
        "alerts": topic(settings.topic_alerts),
    }


def register_agents(app: faust.App, settings: Settings, role: str) -> list[str]:
    """Attach the agents of ``role``; imported lazily so a caption worker never loads the classifier."""
    names: list[str] = []
    roles: Iterable[str] = ("caption", "classify") if role == "all" else () if role == "monitor" else (role,)
    for r in roles:
        if r == "caption":
            from streaming.caption import register
        else:
            from streaming.classify import register
        names.append(register(app, settings))
    return names
