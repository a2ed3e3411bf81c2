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
    assert run_show([])["partitions"] == Settings().kafka.partitions


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


# The CLI's entry point in a child process, once per command given; each command's work is replaced, at the
# call the command makes, by a report of the Hub's state there (the variable, and huggingface_hub's reading).
HUB_PROBE = """
import json, os, sys
from affectstream.cli import main
import huggingface_hub.constants as hub

def report(*args, **kwargs):
    print("HUB " + json.dumps({"variable": os.environ.get("HF_HUB_OFFLINE"), "offline": hub.is_offline_mode()}))
    raise SystemExit(0)

import affectstream.bench.cli, affectstream.streaming.tools.demo, affectstream.streaming.worker.app
import affectstream.training.train
affectstream.streaming.worker.app.create_app = report
affectstream.training.train.train = report
affectstream.streaming.tools.demo.run_demo = report
affectstream.bench.cli.run_bench = report
for args in json.loads(sys.argv[1]):
    try:
        main(args, standalone_mode=False)
    except SystemExit:
        pass
"""
HUB_COMMANDS = {
    "worker": ["worker", "--role", "classify", "--no-create-topics", "--broker", "kafka://127.0.0.1:9",
               "--redis", "redis://127.0.0.1:9/0"],
    "train": ["train", "--preset", "mvsa-roberta"],
    "demo": ["demo", "--no-live"],
    "bench": ["bench", "--quick", "--skip-e2e"],
}


def hub_states(commands: list[str], tmp_path, user_setting: str | None = None) -> list[dict]:
    """The Hub's state inside each command, run one after another in one clean process."""
    import os
    import subprocess
    import sys

    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "TOKENIZERS_PARALLELISM": "false"}  # a clean environment: no HF_HUB_OFFLINE, no TRANSFORMERS_OFFLINE
    if user_setting is not None:
        env["HF_HUB_OFFLINE"] = user_setting
    argv = orjson.dumps([HUB_COMMANDS[c] for c in commands]).decode()
    proc = subprocess.run([sys.executable, "-c", HUB_PROBE, argv], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    reports = [orjson.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("HUB ")]
    assert proc.returncode == 0 and len(reports) == len(commands), proc.stdout + proc.stderr
    return reports


def test_production_commands_leave_the_hub_reachable_and_keep_a_users_setting(tmp_path):
    assert hub_states(["worker", "train"], tmp_path) == [{"variable": None, "offline": False}] * 2
    assert hub_states(["worker", "train"], tmp_path, user_setting="1") == [{"variable": "1", "offline": True}] * 2


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_packaged_model_commands_turn_the_hub_off_unless_the_user_said(command, tmp_path):
    assert hub_states([command], tmp_path) == [{"variable": "1", "offline": True}]


def test_a_user_may_let_the_demo_and_the_bench_reach_the_hub(tmp_path):
    assert hub_states(["demo", "bench"], tmp_path, user_setting="0") == [{"variable": "0", "offline": False}] * 2


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
