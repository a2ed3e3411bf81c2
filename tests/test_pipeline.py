"""The pipeline end to end on a real Kafka-protocol broker (Tansu) and a real redis-server.

Workers run as subprocesses (``python -m affectstream.cli worker``) configured through AFFECTSTREAM_*
variables, exactly as in production; every test has its own topics, consumer group and Redis prefix.
"""
from __future__ import annotations

import base64
import collections
import random
import re
import time
from contextlib import contextmanager

import orjson
import pytest
import redis

from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.tools.sample.make_sample import meme
from affectstream.streaming.tools.workers import WorkerProcess
from affectstream.streaming.worker.kafka_config import bootstrap_servers, create_topics
from tests.servers import settings_for, workers_running

pytestmark = pytest.mark.integration

BRANDS = ["acme", "nimbus", "voltcar"]
WORDS = ["love the new screen", "worst battery ever", "picked one up today", "great coffee", "so slow"]


def make_settings(broker, redis_server, model_dir, **overrides):
    values = dict(model_dir=str(model_dir), captioner="none", batch_max=16, batch_window_s=0.05,
                  caption_batch_window_s=0.05, partitions=4)
    s = settings_for(broker, redis_server, **{**values, **overrides})
    run = s.kafka.app_id.rsplit("-", 1)[-1]
    s = s.replace(topic_posts=f"posts-{run}", topic_enriched=f"enriched-{run}", topic_sentiment=f"sentiment-{run}",
                  topic_dlq=f"dlq-{run}", topic_alerts=f"alerts-{run}")
    create_topics(s)
    return s


def text_posts(n: int, prefix: str = "p") -> list[dict]:
    rng = random.Random(n)
    return [{"id": f"{prefix}-{i}", "text": f"{rng.choice(WORDS)} #{i}", "brands": [BRANDS[i % len(BRANDS)]],
             "created_at": 1764410400000 + i * 1000} for i in range(n)]


def lines_of(posts: list[dict]) -> list[bytes]:
    return [orjson.dumps(p) for p in posts]


@contextmanager
def workers(settings, *roles: str):
    with workers_running([WorkerProcess(settings, role, loglevel="info") for role in roles]) as procs:
        yield procs


def read_topic(settings, topic: str) -> list:
    """Every record currently in ``topic`` (no consumer group; bounded by a short idle poll)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers(settings), group_id=None,
                             enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records = []
        while True:
            batch = consumer.poll(timeout_ms=500)
            if not batch:
                return records
            for recs in batch.values():
                records.extend(recs)
    finally:
        consumer.close()


def redis_client(settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis.url)


def stored_ids(settings) -> set[str]:
    prefix = settings.keys.post("")
    return {k.decode()[len(prefix):] for k in redis_client(settings).scan_iter(match=prefix + "*", count=1000)}


def brand_counts(settings) -> dict[str, collections.Counter]:
    r = redis_client(settings)
    keys = settings.keys
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for key in r.scan_iter(match=keys.brand_pattern(), count=1000):
        brand, _ = keys.parse_brand_key(key.decode())
        for label, n in r.hgetall(key).items():
            counts[brand][label.decode()] += int(n)
    return counts


def wait_for(predicate, timeout_s: float, procs=(), what: str = "condition", every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for w in procs:
            assert w.alive(), f"worker {w.role} exited with {w.proc.returncode}:\n{w.log_tail(60)}"
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _partition_set(spec: str) -> set[int]:
    out: set[int] = set()
    for part in spec.strip("{} ").split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-")
            out.update(range(int(lo), int(hi) + 1))
        elif part:
            out.add(int(part))
    return out


def assigned(worker: WorkerProcess, topic: str) -> set[int] | None:
    """The partitions of ``topic`` in the worker's latest assignment (from faust's log table)."""
    text = open(worker.log_path, errors="replace").read()
    blocks = text.split("Setting newly assigned partitions")
    if len(blocks) < 2:
        return None
    match = re.search(rf"\|\s*{re.escape(topic)}\s*\|\s*(\{{[^}}]*\}})", blocks[-1].split("for group")[0])
    return _partition_set(match.group(1)) if match else set()


def test_every_post_gets_exactly_one_result_with_rationale_and_image_posts_a_caption(broker, redis_server,
                                                                                       tiny_model_dir):
    s = make_settings(broker, redis_server, tiny_model_dir, captioner="offline")
    posts = text_posts(30)
    happy, angry = meme("BEST COFFEE EVER", random.Random(1)), meme("WORST DAY EVER", random.Random(2))
    for i, image in enumerate([happy, angry, happy]):  # the repost of `happy` is a caption cache hit
        posts.append({"id": f"img-{i}", "text": "" if i == 1 else "look at this", "brands": ["nimbus"],
                      "image": {"b64": base64.b64encode(image).decode()}, "created_at": 1764410400000})
    # separate roles, as deployed: a caption worker and a classify worker in one group
    with workers(s, "caption", "classify") as procs:
        produce_lines(s, lines_of(posts))
        ids = {p["id"] for p in posts}
        wait_for(lambda: stored_ids(s) >= ids, 120, procs, "a result in Redis for every post")
        results = [orjson.loads(r.value) for r in read_topic(s, s.kafka.topic_sentiment)]

    assert stored_ids(s) == ids
    by_id = {r["id"]: r for r in results}
    assert set(by_id) == ids and len(results) == len(ids)  # once each on the output topic
    for r in results:
        assert r["rationale"], r
        assert all({"text", "score", "source"} <= set(w) for w in r["rationale"])
        assert r["label"] in r["scores"]
    for i in range(3):
        caption = by_id[f"img-{i}"]["caption"]
        assert isinstance(caption, str) and caption.strip(), by_id[f"img-{i}"]
        assert by_id[f"img-{i}"]["image_error"] is None
    assert by_id["img-0"]["caption"] == by_id["img-2"]["caption"]
    assert redis_client(s).keys(s.keys.caption("*", "*"))  # the cache holds the description
    expected = collections.Counter(b for p in posts for b in p["brands"])
    counts = brand_counts(s)
    for brand, n in expected.items():
        assert sum(counts[brand].values()) == n, (brand, counts[brand])
    assert sum(counts["_all"].values()) == len(posts)


def test_malformed_messages_go_to_the_dlq_while_good_ones_flow(broker, redis_server, tiny_model_dir):
    s = make_settings(broker, redis_server, tiny_model_dir)
    good = text_posts(20, prefix="good")
    bad = [
        b"not json at all {",
        orjson.dumps({"text": "no id"}),
        orjson.dumps({"id": "wrong-types", "text": 42}),
        orjson.dumps({"id": "empty", "text": "   "}),
        orjson.dumps({"id": "garbage-image-only", "text": "", "image": {"b64": "%%% not base64 %%%"}}),
        orjson.dumps({"id": "loopback-only", "text": "", "image": {"url": "http://127.0.0.1:1/x.jpg"}}),
    ]
    with_text = {"id": "garbage-image-with-text", "text": "still love it", "brands": ["acme"],
                 "image": {"b64": base64.b64encode(b"not an image").decode()}}
    lines = lines_of(good[:10]) + bad[:3] + [orjson.dumps(with_text)] + bad[3:] + lines_of(good[10:])
    with workers(s, "all") as procs:
        produce_lines(s, lines)
        ids = {p["id"] for p in good} | {with_text["id"]}
        wait_for(lambda: stored_ids(s) >= ids and len(read_topic(s, s.kafka.topic_dlq)) >= len(bad), 90, procs,
                 "results for the good posts and dead letters for the bad ones")
        dead = [orjson.loads(r.value) for r in read_topic(s, s.kafka.topic_dlq)]

    assert stored_ids(s) == ids
    reasons = {(d["post_id"], d["stage"], d["reason"]) for d in dead}
    assert reasons == {
        (None, "parse", "invalid_json"),
        (None, "parse", "missing_id"),
        ("wrong-types", "parse", "bad_text"),
        ("empty", "parse", "empty_post"),
        ("garbage-image-only", "caption", "bad_base64"),
        ("loopback-only", "caption", "url_not_allowed"),
    }
    assert all(base64.b64decode(d["raw_b64"]) in bad for d in dead)  # the original bytes are kept
    flagged = orjson.loads(redis_client(s).get(s.keys.post(with_text["id"])))
    assert flagged["image_error"] == "not_an_image" and flagged["caption"] is None


def test_replaying_the_same_posts_leaves_counts_unchanged(broker, redis_server, tiny_model_dir):
    s = make_settings(broker, redis_server, tiny_model_dir)
    posts = text_posts(24, prefix="replay")
    with workers(s, "all") as procs:
        produce_lines(s, lines_of(posts))
        wait_for(lambda: len(read_topic(s, s.kafka.topic_sentiment)) >= len(posts), 90, procs, "first pass")
        before = brand_counts(s)
        produce_lines(s, lines_of(posts))  # a producer retry / upstream replay
        wait_for(lambda: len(read_topic(s, s.kafka.topic_sentiment)) >= 2 * len(posts), 60, procs, "second pass")
        after = brand_counts(s)

    assert after == before
    assert sum(before["_all"].values()) == len(posts)
    assert stored_ids(s) == {p["id"] for p in posts}


def test_two_classify_workers_split_the_partitions_and_produce_every_result_once(broker, redis_server,
                                                                                  tiny_model_dir):
    s = make_settings(broker, redis_server, tiny_model_dir)
    posts = text_posts(80, prefix="split")
    with workers(s, "caption", "classify", "classify") as procs:
        classifiers = procs[1:]

        def split() -> bool:
            parts = [assigned(w, s.kafka.topic_enriched) for w in classifiers]
            return all(parts) and not (parts[0] & parts[1]) and parts[0] | parts[1] == set(range(4))

        wait_for(split, 60, procs, "the classify workers to share the posts-enriched partitions")
        produce_lines(s, lines_of(posts))
        ids = {p["id"] for p in posts}
        wait_for(lambda: stored_ids(s) >= ids, 90, procs, "a result for every post")
        results = read_topic(s, s.kafka.topic_sentiment)
        logs = [open(w.log_path, errors="replace").read() for w in classifiers]

    assert all("classified batch" in log for log in logs), "both classify workers must have worked"
    assert stored_ids(s) == ids
    assert {orjson.loads(r.value)["id"] for r in results} == ids
    counts = brand_counts(s)
    assert sum(counts["_all"].values()) == len(posts)
    for brand in BRANDS:
        assert sum(counts[brand].values()) == sum(brand in p["brands"] for p in posts)
