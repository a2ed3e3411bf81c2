"""Kafka client settings, in one place for faust (the worker), kafka-python (tools, admin) and aiokafka:
bootstrap servers, credentials, the contract topics and their partition counts, topic creation."""
from __future__ import annotations

import logging
import ssl
import time
from typing import Any

import faust

from affectstream.streaming.worker.settings import Settings

log = logging.getLogger(__name__)

# role in the pipeline -> the setting naming its topic (docs/contracts.md: Topics), by its flat name
TOPIC_SETTINGS = {
    "posts": "topic_posts",
    "enriched": "topic_enriched",
    "sentiment": "topic_sentiment",
    "dlq": "topic_dlq",
    "alerts": "topic_alerts",
    "feedback": "topic_feedback",
    "shadow": "topic_shadow",
}


def topic_names(settings: Settings) -> dict[str, str]:
    """Role -> topic name, e.g. {"posts": "posts", "enriched": "posts-enriched", ...}."""
    return {role: settings.value(name) for role, name in TOPIC_SETTINGS.items()}


def bootstrap_servers(settings: Settings) -> list[str]:
    """"kafka://h1:9092;h2:9092" (faust style) or "h1:9092,h2:9092" -> ["h1:9092", "h2:9092"]."""
    servers = []
    for part in settings.kafka.brokers.replace(",", ";").split(";"):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        if part:
            servers.append(part.rstrip("/"))
    return servers


def broker_urls(settings: Settings) -> list[str]:
    """The same servers as faust's list of ``scheme://host:port`` URLs (scheme ``kafka`` unless given)."""
    raw = settings.kafka.brokers.strip()
    scheme = raw.split("://", 1)[0] if "://" in raw else "kafka"
    hosts = bootstrap_servers(settings)
    if not hosts:
        raise ValueError("broker_url is empty: start the embedded broker (demo) or pass --broker")
    return [f"{scheme}://{h}" for h in hosts]


def _protocol(settings: Settings) -> str:
    protocol = settings.kafka.security_protocol.upper() or "PLAINTEXT"
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ValueError(f"unknown kafka_security_protocol {settings.kafka.security_protocol!r}")
    return protocol


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=settings.kafka.ssl_cafile or None)


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """SSL / SASL settings -> faust credentials (aiokafka underneath); None for PLAINTEXT."""
    protocol = _protocol(settings)
    if protocol == "PLAINTEXT":
        return None
    context = _ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=settings.kafka.sasl_username, password=settings.kafka.sasl_password,
                                 mechanism=settings.kafka.sasl_mechanism or "PLAIN", ssl_context=context)


def kafka_client_kwargs(settings: Settings, flavor: str = "kafka-python") -> dict[str, Any]:
    """security_protocol / sasl_* / TLS options for kafka-python (ssl_cafile) or aiokafka (ssl_context)."""
    protocol = _protocol(settings)
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL"):
        kwargs.update(sasl_mechanism=settings.kafka.sasl_mechanism or "PLAIN",
                      sasl_plain_username=settings.kafka.sasl_username,
                      sasl_plain_password=settings.kafka.sasl_password)
    if protocol.endswith("SSL"):
        if flavor == "aiokafka":
            kwargs["ssl_context"] = _ssl_context(settings)
        elif settings.kafka.ssl_cafile:
            kwargs["ssl_cafile"] = settings.kafka.ssl_cafile
    return kwargs


def create_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create every contract topic with settings.kafka.partitions (auto-created topics would get the broker
    default). Idempotent; retried while the broker starts."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    deadline = time.monotonic() + timeout_s
    pending = list(dict.fromkeys(topic_names(settings).values()))
    while True:
        admin = None
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(settings), client_id="affectstream-admin",
                                     request_timeout_ms=10_000, **kafka_client_kwargs(settings))
            for name in list(pending):
                try:
                    admin.create_topics([NewTopic(name, settings.kafka.partitions, settings.kafka.replication_factor)])
                    log.info("topic %s created with %d partitions", name, settings.kafka.partitions)
                except TopicAlreadyExistsError:
                    log.info("topic %s already exists", name)
                pending.remove(name)
            return
        except (KafkaError, OSError) as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not create topics {pending}: {type(e).__name__}: {e}") from e
            log.info("broker not ready for topic creation (%s); retrying", type(e).__name__)
            time.sleep(0.5)
        finally:
            if admin is not None:
                admin.close()
