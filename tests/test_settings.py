"""Settings in groups, under the names operators already use: every ``AFFECTSTREAM_*`` variable of before the
groups still sets the same setting with the same default, ``affectstream settings`` shows each value and its
source with secrets masked, and docs/settings.md is the dataclasses' own rendering."""
from __future__ import annotations

import operator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from affectstream.cli import SETTING_FLAGS, main, parse_set
from affectstream.streaming.tools.settings_report import GENERATED_BEGIN, GENERATED_END, reference_markdown
from affectstream.streaming.tools.workers import settings_env
from affectstream.streaming.worker.settings import SETTING_FIELDS, Settings, env_name

ROOT = Path(__file__).resolve().parent.parent

# Every setting and its default as the flat ``Settings`` declared them before the groups (frozen: a setting
# renamed, dropped or given another default by accident fails here), with the grouped name code reads now.
BEFORE_THE_GROUPS: dict[str, tuple[object, str]] = {
    "broker_url": ("kafka://127.0.0.1:9092", "kafka.brokers"),
    "redis_url": ("redis://127.0.0.1:6379/0", "redis.url"),
    "app_id": ("affectstream", "kafka.app_id"),
    "topic_posts": ("posts", "kafka.topic_posts"),
    "topic_enriched": ("posts-enriched", "kafka.topic_enriched"),
    "topic_sentiment": ("sentiment", "kafka.topic_sentiment"),
    "topic_dlq": ("posts-dlq", "kafka.topic_dlq"),
    "topic_alerts": ("sentiment-alerts", "kafka.topic_alerts"),
    "topic_feedback": ("feedback", "kafka.topic_feedback"),
    "topic_shadow": ("sentiment-shadow", "kafka.topic_shadow"),
    "partitions": (4, "kafka.partitions"),
    "fetch_max_wait_ms": (50, "kafka.fetch_max_wait_ms"),
    "producer_linger_ms": (2.0, "kafka.producer_linger_ms"),
    "replication_factor": (1, "kafka.replication_factor"),
    "model_dir": ("models/default", "classify.model_dir"),
    "batch_max": (32, "classify.micro_batch_max"),
    "batch_window_s": (0.05, "classify.micro_batch_window_s"),
    "top_k": (0, "classify.top_k"),
    "device": ("auto", "worker.device"),
    "threads": (0, "worker.threads"),
    "onnx_lanes": (0, "classify.onnx_lanes"),
    "gc_freeze": (True, "worker.gc_freeze"),
    "inference_backend": ("auto", "classify.inference_backend"),
    "model_registry": ("", "classify.model_registry"),
    "rollback_min_calls": (50, "rollout.min_calls"),
    "rollback_max_error_rate": (0.05, "rollout.max_error_rate"),
    "rollback_min_posts": (200, "rollout.min_posts"),
    "rollback_max_dlq_rate": (0.02, "rollout.max_dlq_rate"),
    "rollback_max_disagreement": (0.5, "rollout.max_disagreement"),
    "rollback_min_corrections": (20, "rollout.min_corrections"),
    "rollback_max_analyst_disagreement": (0.5, "rollout.max_analyst_disagreement"),
    "sinks": ("redis,topic", "classify.sinks"),
    "brands_file": ("", "brands.file"),
    "max_mentions_per_post": (100, "brands.max_mentions_per_post"),
    "max_targets_per_post": (16, "brands.max_targets_per_post"),
    "untargeted_brand": ("", "brands.untargeted"),
    "captioner": ("offline", "caption.captioner"),
    "captioner_trust_remote_code": (False, "caption.trust_remote_code"),
    "captioner_mismatch": ("warn", "classify.captioner_mismatch"),
    "caption_batch_max": (16, "caption.micro_batch_max"),
    "caption_batch_window_s": (0.1, "caption.micro_batch_window_s"),
    "caption_timeout_s": (30.0, "caption.timeout_s"),
    "caption_batch_max_pixels": (64000000, "caption.max_decoded_pixels"),
    "max_text_chars": (20000, "limits.max_text_chars"),
    "max_id_chars": (256, "limits.max_id_chars"),
    "max_message_bytes": (16777216, "limits.max_message_bytes"),
    "image_max_bytes": (10485760, "limits.image_max_bytes"),
    "image_max_pixels": (40000000, "limits.image_max_pixels"),
    "fetch_timeout_s": (5.0, "limits.fetch_timeout_s"),
    "allow_private_urls": (False, "limits.allow_private_urls"),
    "image_root": ("", "limits.image_root"),
    "redis_prefix": ("as:", "redis.prefix"),
    "result_ttl_s": (604800, "redis.result_ttl_s"),
    "seen_ttl_s": (604800, "redis.seen_ttl_s"),
    "bucket_ttl_s": (172800, "redis.bucket_ttl_s"),
    "caption_ttl_s": (2592000, "redis.caption_ttl_s"),
    "kafka_security_protocol": ("PLAINTEXT", "kafka.security_protocol"),
    "kafka_sasl_mechanism": ("", "kafka.sasl_mechanism"),
    "kafka_sasl_username": ("", "kafka.sasl_username"),
    "kafka_sasl_password": ("", "kafka.sasl_password"),
    "kafka_ssl_cafile": ("", "kafka.ssl_cafile"),
    "redis_password": ("", "redis.password"),
    "redis_cluster": (False, "redis.cluster"),
    "redis_tls": (False, "redis.tls"),
    "session_timeout_s": (6.0, "kafka.session_timeout_s"),
    "heartbeat_interval_s": (1.0, "kafka.heartbeat_interval_s"),
    "web_port": (6066, "web.port"),
    "web_enabled": (True, "web.enabled"),
    "web_bind": ("127.0.0.1", "web.bind"),
    "web_auth_token": ("", "web.auth_token"),
}


def distinct(default: object) -> tuple[str, object]:
    """A raw environment value unlike ``default``, and the value it must become."""
    if isinstance(default, bool):
        return ("false", False) if default else ("yes", True)
    if isinstance(default, int):
        return str(default + 7), default + 7
    if isinstance(default, float):
        return str(default + 0.25), default + 0.25
    return "set-from-env", "set-from-env"


def test_the_seventy_settings_of_before_are_all_there_with_their_defaults():
    assert len(BEFORE_THE_GROUPS) == 70
    assert set(BEFORE_THE_GROUPS) <= set(SETTING_FIELDS)  # settings added since are free to join
    defaults = Settings().by_name()
    assert {name: defaults[name] for name in BEFORE_THE_GROUPS} == {n: d for n, (d, _) in BEFORE_THE_GROUPS.items()}


@pytest.mark.parametrize("name", sorted(BEFORE_THE_GROUPS))
def test_every_old_environment_variable_sets_its_grouped_setting_and_only_it(name):
    default, path = BEFORE_THE_GROUPS[name]
    raw, expected = distinct(default)
    loaded = Settings.load(env={env_name(name): raw})
    assert operator.attrgetter(path)(loaded) == expected
    defaults = Settings().by_name()
    changed = {n for n, v in loaded.by_name().items() if v != defaults[n]}
    assert changed == {name}
    assert parse_set(f"{name}={raw}") == {name: expected}                  # --set takes the same name
    assert Settings.load({name: expected}, env={}).value(name) == expected  # and so do overrides (flags)


def test_every_flag_names_a_setting():
    assert {name for name, _, _ in SETTING_FLAGS.values()} <= set(SETTING_FIELDS)


def test_flags_beat_the_environment_which_beats_defaults():
    env = {"AFFECTSTREAM_BATCH_MAX": "7", "AFFECTSTREAM_CAPTIONER": "none"}
    s = Settings.load({"captioner": "offline", "caption_timeout_s": None}, env=env)
    assert (s.classify.micro_batch_max, s.caption.captioner, s.caption.timeout_s) == (7, "offline", 30.0)


def test_replace_takes_flat_names_and_refuses_unknown_ones():
    s = Settings().replace(batch_max=8, redis_url="", web_enabled=False)
    assert (s.classify.micro_batch_max, s.redis.url, s.web.enabled) == (8, "", False)
    assert Settings().classify.micro_batch_max == 32  # a copy: the original is untouched
    with pytest.raises(ValueError, match="unknown setting"):
        Settings().replace(micro_batch_max=8)         # the grouped field name is not a setting name
    with pytest.raises(ValueError, match="AFFECTSTREAM_BATCH_MAX: expected int"):
        Settings.load(env={"AFFECTSTREAM_BATCH_MAX": "many"})


def test_a_worker_child_process_environment_loads_the_same_settings():
    s = Settings().replace(batch_max=3, redis_password="pw", allow_private_urls=True, producer_linger_ms=0.5)
    assert Settings.load(env=settings_env(s, base={})) == s


def test_secrets_and_url_passwords_are_masked():
    s = Settings().replace(kafka_sasl_password="hunter2", redis_password="hunter3", web_auth_token="tok-123",
                           redis_url="redis://user:hunter4@h:6379/0",
                           broker_url="kafka://u:hunter5@h1:9092,kafka://u:hunter6@h2:9092")
    shown = s.redacted()
    assert (shown["kafka_sasl_password"], shown["redis_password"], shown["web_auth_token"]) == ("***",) * 3
    assert shown["redis_url"] == "redis://user:***@h:6379/0"
    assert shown["broker_url"] == "kafka://u:***@h1:9092,kafka://u:***@h2:9092"
    assert not any(f"hunter{i}" in str(shown) for i in range(2, 7)) and "tok-123" not in str(shown)
    assert Settings().redacted()["web_auth_token"] == ""  # an unset secret shows as unset


def invoke_settings(args: list[str], env: dict[str, str]) -> str:
    result = CliRunner().invoke(main, ["settings", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_settings_command_prints_each_value_with_its_source_and_masks_secrets():
    env = {"AFFECTSTREAM_BATCH_MAX": "8", "AFFECTSTREAM_REDIS_URL": "redis://u:hunter2@h:1/0",
           "AFFECTSTREAM_WEB_AUTH_TOKEN": "tok-secret-9"}
    out = invoke_settings(["--json", "--captioner", "none", "--set", "kafka_sasl_password=hunter3"], env)
    rows = {r["path"]: r for r in orjson.loads(out)}
    assert len(rows) == len(SETTING_FIELDS)
    assert rows["caption.captioner"] == {"path": "caption.captioner", "name": "captioner",
                                         "variable": "AFFECTSTREAM_CAPTIONER", "value": "none", "source": "flag"}
    assert (rows["classify.micro_batch_max"]["value"], rows["classify.micro_batch_max"]["source"]) == (8, "env")
    assert (rows["kafka.partitions"]["value"], rows["kafka.partitions"]["source"]) == (4, "default")
    assert rows["kafka.sasl_password"]["value"] == "***" and rows["kafka.sasl_password"]["source"] == "flag"
    assert rows["redis.url"]["value"] == "redis://u:***@h:1/0" and rows["web.auth_token"]["value"] == "***"
    assert "hunter" not in out and "tok-secret-9" not in out
    text = invoke_settings(["--captioner", "none"], env)
    assert "hunter" not in text and "tok-secret-9" not in text
    line = next(ln for ln in text.splitlines() if ln.startswith("classify.micro_batch_max "))
    assert line.split() == ["classify.micro_batch_max", "8", "env", "AFFECTSTREAM_BATCH_MAX"]


def test_the_settings_page_is_the_rendering_of_the_dataclasses():
    page = (ROOT / "docs" / "settings.md").read_text()
    assert GENERATED_BEGIN in page and GENERATED_END in page
    generated = page.split(GENERATED_BEGIN, 1)[1].split(GENERATED_END, 1)[0]
    assert generated.strip() == reference_markdown().strip(), \
        "docs/settings.md is stale: paste `affectstream settings --markdown` between its markers"
    for name in SETTING_FIELDS:
        assert f"`{env_name(name)}`" in generated
    assert "### The three batches" in generated
