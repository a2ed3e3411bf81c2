"""Analysts' corrections: the record's checks and reasons (pure), the intake's Redis writes (real Redis, and a
real Redis Cluster), the monitor's intake agent and the bulk command on the real broker."""
from __future__ import annotations

import asyncio
import base64

import orjson
import pytest
from click.testing import CliRunner

from affectstream.cli import main
from affectstream.streaming.monitor.intake import Intake
from affectstream.streaming.tools.services import free_port
from affectstream.streaming.tools.workers import WorkerProcess, settings_env
from affectstream.streaming.worker.feedback import (RATE_PER_MINUTE, REASONS, FeedbackError, check_against_result,
                                                    latest_of, parse_correction)
from affectstream.streaming.worker.kafka_config import create_topics
from affectstream.streaming.worker.redis_client import async_redis, sync_redis
from tests.servers import settings_for, workers_running
from tests.test_pipeline import read_topic, wait_for

T0 = 1764410400000  # 2025-11-29 10:00 UTC
RESULT = {"id": "p1", "label": "positive", "scores": {"negative": 0.1, "neutral": 0.2, "positive": 0.7},
          "brands": ["acme", "nimbus"], "model": "v1",
          "targets": [{"brand": "acme", "label": "positive", "scores": {}, "rationale": [], "mentions": []},
                      {"brand": "nimbus", "label": "neutral", "scores": {}, "rationale": [], "mentions": []}]}


def record(post_id="p1", label="negative", analyst="ana", ts=T0, **extra) -> bytes:
    return orjson.dumps({"post_id": post_id, "label": label, "analyst": analyst, "ts": ts, **extra})


# --- the record: shape and checks against the stored result ----------------------------------------------

@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "not_an_object"),
    (b"x" * 20_000, "too_large"),
    (orjson.dumps({"label": "negative", "analyst": "a", "ts": T0}), "missing_post_id"),
    (orjson.dumps({"post_id": "p1", "label": "negative", "ts": T0}), "missing_analyst"),
    (orjson.dumps({"post_id": "p1", "label": "negative", "analyst": "a\x00b", "ts": T0}), "missing_analyst"),
    (orjson.dumps({"post_id": "p1", "label": 3, "analyst": "a", "ts": T0}), "bad_label"),
    (orjson.dumps({"post_id": "p1", "label": "negative", "analyst": "a"}), "bad_ts"),
    (orjson.dumps({"post_id": "p1", "label": "negative", "analyst": "a", "ts": "yesterday"}), "bad_ts"),
    (orjson.dumps({"post_id": "p1", "label": "negative", "analyst": "a", "ts": T0 * 10}), "bad_ts"),
    (orjson.dumps({"post_id": "p1", "label": "negative", "analyst": "a", "ts": T0, "target": 7.5}), "bad_target"),
    (orjson.dumps({"post_id": "p1", "label": "negative", "analyst": "a", "ts": T0, "wrong_words": "love"}), "bad_wrong_words"),
    (orjson.dumps({"post_id": "p1", "label": "negative", "analyst": "a", "ts": T0, "wrong_words": ["x"] * 17}), "bad_wrong_words"),
    (orjson.dumps({"post_id": "p1", "label": "negative", "analyst": "a", "ts": T0, "note": "n" * 1001}), "bad_note"),
])
def test_malformed_corrections_are_refused_with_their_reason(raw, reason):
    with pytest.raises(FeedbackError) as caught:
        parse_correction(raw, now=T0)
    assert caught.value.reason == reason and reason in REASONS


def test_a_correction_is_checked_against_the_stored_result_which_says_the_old_label_and_model():
    c = parse_correction(record(old_label="neutral", model="forged", wrong_words=["love", "love"]), now=T0)
    checked = check_against_result(c, orjson.dumps(RESULT))
    assert (checked.old_label, checked.model, checked.wrong_words) == ("positive", "v1", ("love",))
    target = check_against_result(parse_correction(record(target="nimbus"), now=T0), RESULT)
    assert (target.old_label, target.field) == ("neutral", "nimbus")
    assert parse_correction(record(target=""), now=T0).target is None     # "" is the post itself
    for c, stored, reason in [(record(), None, "unknown_post"), (record(label="sarcastic"), RESULT, "label_not_in_model"),
                              (record(target="voltcar"), RESULT, "unknown_target")]:
        with pytest.raises(FeedbackError) as caught:
            check_against_result(parse_correction(c, now=T0), stored)
        assert caught.value.reason == reason


def test_the_latest_correction_per_target_is_the_newest_whatever_the_arrival_order():
    older, newer = record(analyst="ana", ts=T0, label="negative"), record(analyst="bob", ts=T0 + 5, label="neutral")
    brand = record(analyst="ana", ts=T0 + 1, target="acme", label="negative")
    assert latest_of([newer, older, brand])[""]["analyst"] == "bob"
    assert latest_of([older, newer, brand])[""]["analyst"] == "bob" and latest_of([brand])["acme"]["ts"] == T0 + 1


# --- the intake's Redis writes --------------------------------------------------------------------------

def put_results(s, results: dict[str, dict]) -> None:
    r = sync_redis(s)
    try:
        for post_id, result in results.items():
            r.set(s.keys.post(post_id), orjson.dumps({**result, "id": post_id}))
    finally:
        r.close()


def run_intake(s, raws: list[bytes], rate_limit: int = RATE_PER_MINUTE) -> list:
    async def go():
        client = async_redis(s)
        try:
            intake = Intake(client, s.keys, rate_limit)
            return [await intake.take_in(raw) for raw in raws]
        finally:
            await client.aclose()
    return asyncio.run(go())


def history(s, post_id: str) -> tuple[list[dict], dict[str, dict]]:
    r = sync_redis(s)
    try:
        return ([orjson.loads(h) for h in r.lrange(s.keys.feedback(post_id), 0, -1)],
                {k.decode(): orjson.loads(v) for k, v in r.hgetall(s.keys.feedback_latest(post_id)).items()})
    finally:
        r.close()


@pytest.mark.integration
def test_two_analysts_on_one_post_both_kept_last_wins_and_redelivery_changes_nothing(redis_server):
    s = settings_for(redis=redis_server)
    put_results(s, {"p1": RESULT})
    ana, bob = record(analyst="ana", ts=T0 + 1_000), record(analyst="bob", ts=T0 + 2_000, label="neutral")
    outcomes = run_intake(s, [ana, bob, ana, bob, record(analyst="cy", ts=T0 + 500, target="acme")])
    assert [o.status for o in outcomes] == ["stored", "stored", "duplicate", "duplicate", "stored"]
    kept, latest = history(s, "p1")
    assert [h["analyst"] for h in kept] == ["ana", "bob", "cy"]
    assert latest[""]["analyst"] == "bob" and latest["acme"]["analyst"] == "cy"
    assert kept[0]["old_label"] == "positive" and kept[0]["model"] == "v1"
    # an older correction arriving after a newer one (a late producer) is kept in the history, not made latest
    late = run_intake(s, [record(analyst="dee", ts=T0 + 1_500, label="negative")])
    assert late[0].status == "stored_older"
    kept, latest = history(s, "p1")
    assert len(kept) == 4 and latest[""]["analyst"] == "bob"
    r = sync_redis(s)
    assert r.zscore(s.keys.feedback_index(), "p1") == T0 + 2_000
    r.close()


@pytest.mark.integration
def test_a_flood_from_one_account_is_rate_limited_per_minute_and_others_are_not(redis_server):
    s = settings_for(redis=redis_server)
    put_results(s, {f"f{i}": RESULT for i in range(8)})
    flood = [record(post_id=f"f{i}", analyst="mallory", ts=T0 + i) for i in range(8)]
    outcomes = run_intake(s, flood + [record(post_id="f0", analyst="ana", ts=T0 + 9),
                                      record(post_id="f7", analyst="mallory", ts=T0 + 60_000)], rate_limit=5)
    assert [o.status for o in outcomes[:8]] == ["stored"] * 5 + ["rejected"] * 3
    assert {o.reason for o in outcomes[5:8]} == {"rate_limited"}
    assert outcomes[8].status == "stored" and outcomes[9].status == "stored"  # another analyst; the next minute
    assert [o.reason for o in run_intake(s, [record(post_id="nope"), record(label="sarcastic", post_id="f1")])] \
        == ["unknown_post", "label_not_in_model"]


@pytest.mark.integration
def test_the_intake_writes_a_posts_feedback_keys_in_one_slot_on_a_cluster(redis_cluster):
    s = settings_for(redis_url=redis_cluster.url, redis_cluster=True)
    ids = ["odd{7}-7", "}{", "plain"]
    put_results(s, {i: RESULT for i in ids})
    outcomes = run_intake(s, [record(post_id=i, ts=T0 + n) for n, i in enumerate(ids)] + [record(post_id="}{", ts=T0 + 1)])
    assert [o.status for o in outcomes] == ["stored", "stored", "stored", "duplicate"]
    for i in ids:
        kept, latest = history(s, i)
        assert len(kept) == 1 and latest[""]["post_id"] == i


# --- the monitor's agent and the bulk command, on the real broker ------------------------------------------

def stream_settings(broker, redis_server, **overrides):
    s = settings_for(broker, redis_server, **{"partitions": 2, "web_port": free_port(), **overrides})
    run = s.kafka.app_id.rsplit("-", 1)[-1]
    s = s.replace(topic_feedback=f"feedback-{run}", topic_dlq=f"dlq-{run}", topic_posts=f"posts-{run}",
                  topic_enriched=f"enriched-{run}", topic_sentiment=f"sentiment-{run}", topic_alerts=f"alerts-{run}",
                  topic_shadow=f"shadow-{run}")
    create_topics(s)
    return s


def produce(s, raws: list[bytes]) -> None:
    from affectstream.streaming.tools.producer import produce_lines

    produce_lines(s, raws, topic=s.kafka.topic_feedback)


@pytest.mark.integration
def test_the_monitors_intake_keeps_good_corrections_and_dead_letters_bad_ones_with_reasons(broker, redis_server):
    s = stream_settings(broker, redis_server)
    put_results(s, {"m1": RESULT, "m2": RESULT})
    good = [record(post_id="m1", analyst="ana", ts=T0 + 1), record(post_id="m2", analyst="bob", ts=T0 + 2, target="acme")]
    bad = [b"{oops", record(post_id="ghost"), record(post_id="m1", label="sarcastic"), record(post_id="m2", target="voltcar")]
    with workers_running([WorkerProcess(s, "monitor")]) as procs:
        produce(s, good + bad + good)       # the good ones twice: redelivered records store once
        dead = wait_for(lambda: len(read_topic(s, s.kafka.topic_dlq)) >= 4 and read_topic(s, s.kafka.topic_dlq), 90, procs,
                        "the bad corrections in the DLQ")
        wait_for(lambda: history(s, "m2")[0], 30, procs, "the good corrections in Redis")
        time_to_settle = wait_for(lambda: "feedback duplicate" in procs[0].log_tail(400), 30, procs, "the repeats")
        assert time_to_settle
    records = [orjson.loads(r.value) for r in dead]
    assert sorted(r["reason"] for r in records) == ["invalid_json", "label_not_in_model", "unknown_post", "unknown_target"]
    assert {r["stage"] for r in records} == {"feedback"}
    assert orjson.loads(base64.b64decode(next(r for r in records if r["reason"] == "unknown_post")["raw_b64"]))["post_id"] == "ghost"
    assert [len(history(s, i)[0]) for i in ("m1", "m2")] == [1, 1]
    assert history(s, "m2")[1]["acme"]["old_label"] == "positive"


@pytest.mark.integration
def test_the_bulk_command_checks_every_line_sends_the_good_ones_and_counts_the_rest(broker, redis_server, tmp_path):
    s = stream_settings(broker, redis_server)
    put_results(s, {f"b{i}": RESULT for i in range(4)})
    lines = [record(post_id="b0"), record(post_id="b1", target="nimbus", analyst="bob"),
             orjson.dumps({"post_id": "b2", "label": "neutral", "analyst": "cy"}),   # no ts: stamped now
             record(post_id="zz"), record(post_id="b3", label="meh"), b"not json"]
    path = tmp_path / "corrections.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(main, ["feedback", str(path)], env=settings_env(s), catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "sent 3 corrections" in result.output and "rejected 3" in result.output
    for reason in ("unknown_post 1", "label_not_in_model 1", "invalid_json 1"):
        assert reason in result.output
    sent = [orjson.loads(r.value) for r in read_topic(s, s.kafka.topic_feedback)]
    assert sorted(r["post_id"] for r in sent) == ["b0", "b1", "b2"]
    assert {r["old_label"] for r in sent} == {"positive", "neutral"}
    assert next(r for r in sent if r["post_id"] == "b2")["ts"] > T0        # stamped at the import
    dry = CliRunner().invoke(main, ["feedback", "--dry-run", str(path)], env=settings_env(s))
    assert "checked 3 corrections" in dry.output and len(read_topic(s, s.kafka.topic_feedback)) == 3
