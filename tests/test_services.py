"""Embedded real servers: Tansu broker and redis-server."""
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from affectstream.streaming.tools.services import EmbeddedServices, start_redis
from affectstream.streaming.worker.kafka_config import bootstrap_servers, create_topics, kafka_client_kwargs
from affectstream.streaming.worker.redis_client import redis_client_kwargs
from affectstream.streaming.worker.settings import Settings
from tests.servers import settings_for


def unique_topics(**extra) -> dict:
    run = uuid.uuid4().hex[:6]
    return {f"topic_{t}": f"{t}-{run}" for t in ("posts", "enriched", "sentiment", "dlq", "alerts")} | extra


def test_topics_are_created_with_the_configured_partitions(broker):
    settings = settings_for(broker, partitions=3, **unique_topics())
    create_topics(settings)
    create_topics(settings)  # idempotent
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(settings))
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([settings.kafka.topic_posts,
                                                                                      settings.kafka.topic_dlq])}
    finally:
        admin.close()
    assert described == {settings.kafka.topic_posts: 3, settings.kafka.topic_dlq: 3}
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers(settings))
    try:
        assert consumer.partitions_for_topic(settings.kafka.topic_sentiment) == {0, 1, 2}
    finally:
        consumer.close()


def test_produce_and_consume_one_message(broker):
    settings = settings_for(broker, partitions=1, **unique_topics())
    create_topics(settings)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers(settings), **kafka_client_kwargs(settings))
    producer.send(settings.kafka.topic_posts, key=b"p1", value=b'{"id":"p1","text":"hi"}').get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers(settings), auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000)
    consumer.assign([TopicPartition(settings.kafka.topic_posts, 0)])
    try:
        message = next(iter(consumer))
    finally:
        consumer.close()
    assert (message.key, message.value) == (b"p1", b'{"id":"p1","text":"hi"}')


def test_redis_starts_and_answers(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    assert client.ping()
    client.close()


def test_redis_password_is_required_when_set():
    service = start_redis(password="s3cret/pw")
    try:
        assert "s3cret" not in Settings().replace(redis_url=service.url).redacted()["redis_url"]
        with_password = redis.Redis.from_url(service.url)
        assert with_password.ping()
        from_settings = redis.Redis.from_url(f"redis://127.0.0.1:{service.port}/0",
                                             **redis_client_kwargs(Settings().replace(redis_password="s3cret/pw")))
        assert from_settings.ping()
        without = redis.Redis.from_url(f"redis://127.0.0.1:{service.port}/0", retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.exceptions.AuthenticationError):
            without.set("k", "v")
    finally:
        service.stop()
    assert not service.alive()


def test_kafka_client_kwargs_for_sasl_ssl():
    s = Settings().replace(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="u", kafka_sasl_password="p", kafka_ssl_cafile="/ca.pem")
    assert kafka_client_kwargs(s) == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                      "sasl_plain_username": "u", "sasl_plain_password": "p",
                                      "ssl_cafile": "/ca.pem"}
    assert kafka_client_kwargs(Settings()) == {"security_protocol": "PLAINTEXT"}
    assert bootstrap_servers(Settings().replace(broker_url="kafka://a:1;b:2")) == ["a:1", "b:2"]


def test_embedded_services_start_what_is_empty_and_stop_it():
    with EmbeddedServices(Settings().replace(broker_url="", redis_url="", **unique_topics()), create_topics=False) as svc:
        assert svc.settings.kafka.brokers.startswith("kafka://127.0.0.1:")
        assert redis.Redis.from_url(svc.settings.redis.url).ping()
        pids = [s.pid for s in svc.services]
    assert not any(running(pid) for pid in pids)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may be slow in a container)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_children_die_when_the_parent_is_terminated(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from affectstream.streaming.tools.services import EmbeddedServices
        from affectstream.streaming.worker.settings import Settings
        with EmbeddedServices(Settings().replace(broker_url="kafka://unused:1", redis_url="")) as svc:
            print(svc.services[0].pid, flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    child = int(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    for _ in range(100):
        if not running(child):
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("redis-server outlived its parent")
