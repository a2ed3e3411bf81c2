"""The command line: settings flags and environment, and `produce` against a real broker."""
from __future__ import annotations

import uuid

import click
import orjson
import pytest
from click.testing import CliRunner

from affectstream.cli import main, parse_set, settings_options
from affectstream.streaming.worker.kafka_config import create_topics
from affectstream.streaming.worker.settings import Settings
from tests.servers import settings_for


@click.command()
@settings_options
def show(settings: Settings) -> None:
    click.echo(orjson.dumps(settings.redacted()).decode())


def run_show(args, env=None) -> dict:
    result = CliRunner().invoke(show, args, env=env or {}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


def test_flags_override_environment_which_overrides_defaults():
    env = {"AFFECTSTREAM_BATCH_MAX": "7", "AFFECTSTREAM_CAPTIONER": "none", "AFFECTSTREAM_WEB_ENABLED": "true"}
    s = run_show(["--captioner", "offline", "--batch-window", "0.2", "--without-web", "--broker",
                  "kafka://h1:9092,h2:9092", "--set", "caption_timeout_s=3.5"], env)
    assert s["batch_max"] == 7                      # environment
    assert s["captioner"] == "offline"              # flag beats environment
    assert s["batch_window_s"] == 0.2 and s["caption_timeout_s"] == 3.5
    assert s["web_enabled"] is False
    assert s["broker_url"] == "kafka://h1:9092,h2:9092"
    assert run_show([])["partitions"] == Settings().partitions


def test_secrets_come_from_the_environment_and_are_never_printed():
    s = run_show([], {"AFFECTSTREAM_KAFKA_SASL_PASSWORD": "hunter2", "AFFECTSTREAM_REDIS_URL": "redis://u:pw@h:1/0"})
    assert s["kafka_sasl_password"] == "***" and "pw" not in s["redis_url"]


@pytest.mark.parametrize("item", ["nonsense", "no_such_setting=1", "batch_max=many"])
def test_bad_set_values_are_usage_errors(item):
    with pytest.raises(click.BadParameter):
        parse_set(item)
    result = CliRunner().invoke(show, ["--set", item], env={})
    assert result.exit_code == 2


def test_set_accepts_env_style_names():
    assert parse_set("AFFECTSTREAM_BATCH_MAX=3") == {"batch_max": 3}
    assert parse_set("allow-private-urls=yes") == {"allow_private_urls": True}


def test_worker_needs_a_broker():
    result = CliRunner().invoke(main, ["worker", "--broker", "", "--redis", "redis://x"], env={})
    assert result.exit_code == 2 and "--broker" in result.output


def test_commands_are_listed():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "worker", "produce", "tail"):
        assert command in result.output


@pytest.mark.integration
def test_produce_sends_every_line_keyed_by_post_id_and_keeps_invalid_lines(broker, tmp_path):
    from kafka import KafkaConsumer, TopicPartition

    topic = f"cli-{uuid.uuid4().hex[:8]}"
    s = settings_for(broker, None, topic_posts=topic, partitions=2)
    create_topics(s)
    lines = [orjson.dumps({"id": "a-1", "text": "hello"}), b"", b"not json {", orjson.dumps({"id": 7, "text": "x"}),
             orjson.dumps({"text": "no id"})]
    path = tmp_path / "posts.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(main, ["produce", str(path), "--broker", broker.url, "--topic", topic,
                                       "--no-progress"], env={}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "sent 4 messages" in result.output

    consumer = KafkaConsumer(bootstrap_servers=broker.url.split("://")[1], group_id=None, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(2)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records = []
    while batch := consumer.poll(timeout_ms=1000):
        records += [r for recs in batch.values() for r in recs]
    consumer.close()
    got = {(r.key, r.value) for r in records}
    assert got == {(b"a-1", lines[0]), (None, b"not json {"), (b"7", lines[3]), (None, lines[4])}
