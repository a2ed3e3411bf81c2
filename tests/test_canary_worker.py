"""A canary in a real classify worker, on the real broker and redis-server: ``affectstream model canary v2
--share 0.5`` on a 4-partition ``posts-enriched`` topic serves the posts of partitions 0-1 with v2 and the
rest with v1, each post counted once under the label of the model that served it, nothing shadowed;
``affectstream model off`` hands partitions 0-1 back to v1 at the worker's next reload check.

The two versions are real tiny models (``tests.tiny_models``) whose sentiment bias is pushed far toward one
label each (v1 ``positive``, v2 ``negative``), so which model served a post shows in its label as well as its
version, and the expected brand-minute counts are known exactly. Posts go to explicit partitions (kafka-python
``partition=``): the partition, not the key's hash, decides the model.
"""
from __future__ import annotations

import collections
import contextlib
import time
from pathlib import Path

import orjson
import pytest
import torch

from affectstream.model.config import SENTIMENT_LABELS
from affectstream.model.deploy import save_deployed
from affectstream.model.registry import Registry
from affectstream.streaming.tools.producer import make_producer
from affectstream.streaming.tools.workers import settings_env
from affectstream.streaming.worker.classify import RELOAD_CHECK_S
from tests.test_faults import assert_exact, audit, log_lines
from tests.test_feedback import stream_settings
from tests.test_feedback_loop import cli
from tests.test_pipeline import BRANDS, assigned, brand_counts, read_topic, redis_client, wait_for, workers
from tests.tiny_models import tiny_classifier

pytestmark = pytest.mark.integration

PARTITIONS = 4
SHARE = 0.5
CANARY = {0, 1}  # p < ceil(0.5 x 4)
LABEL = {"v1": "positive", "v2": "negative"}  # what each version answers, whatever the post
T0 = 1764410400000
TEXTS = ["love the new screen", "worst battery ever", "picked one up today", "great coffee", "so slow"]


def biased_model_dir(directory: Path, label: str) -> Path:
    """A tiny random model whose sentiment head answers ``label`` for every post (bias +50 on that logit:
    the tiny encoder's logits are of order 1, so no post can tip it)."""
    model, tokenizer = tiny_classifier(kind="bert", top_k=4, scratch=directory.parent)
    with torch.no_grad():
        model.sentiment_head.bias[list(model.config.sentiment_labels).index(label)] += 50.0
    return save_deployed(model, tokenizer, directory)


def canary_settings(broker, redis_server, registry: Registry):
    return stream_settings(broker, redis_server, partitions=PARTITIONS, captioner="none", batch_max=16,
                           batch_window_s=0.05, model_registry=str(registry.root), model_dir=str(registry.current_dir()))


def posts_on(partitions: list[int], n: int, tag: str) -> list[tuple[int, dict]]:
    """``n`` enriched text posts per partition, as (partition, post)."""
    out = []
    for p in partitions:
        for i in range(n):
            k = len(out)
            out.append((p, {"id": f"{tag}-p{p}-{i}", "text": f"{TEXTS[k % len(TEXTS)]} #{k}",
                            "brands": [BRANDS[k % len(BRANDS)]], "created_at": T0 + k * 1000}))
    return out


def send(producer, s, placed: list[tuple[int, dict]]) -> None:
    """Each post to its own partition of ``posts-enriched``; returns once the broker acknowledged them all."""
    futures = [producer.send(s.kafka.topic_enriched, key=post["id"].encode(), value=orjson.dumps(post), partition=p)
               for p, post in placed]
    producer.flush()
    for future, (p, _) in zip(futures, placed):
        assert future.get(timeout=30).partition == p


def served(s, ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """id -> (model, label) of each stored result; None until every one of ``ids`` is stored."""
    r = redis_client(s)
    raws = r.mget([s.keys.post(i) for i in ids])
    if any(raw is None for raw in raws):
        return None
    return {i: (x["model"], x["label"]) for i, x in zip(ids, map(orjson.loads, raws))}


def shadow_keys(s) -> list[str]:
    """Every key of this test's prefix that the shadow writes (``shadow_result``, ``shadow_agree``)."""
    r = redis_client(s)
    return [k.decode() for k in r.scan_iter(match=f"{s.redis.prefix}shadow*", count=1000)]


def test_a_canary_serves_the_first_half_of_the_partitions_until_it_is_turned_off(broker, redis_server, tmp_path):
    started = time.monotonic()
    assert set(LABEL.values()) <= set(SENTIMENT_LABELS)
    registry = Registry(tmp_path / "registry")
    v1 = registry.add(biased_model_dir(tmp_path / "src-v1", LABEL["v1"]), {"reason": "deployed"})
    v2 = registry.add(biased_model_dir(tmp_path / "src-v2", LABEL["v2"]), {"reason": "candidate"})
    assert (v1, v2) == ("v1", "v2")
    registry.promote(v1)
    s = canary_settings(broker, redis_server, registry)
    env = settings_env(s)
    assert "rollout canary: v2 at 50% beside v1" in cli(env, "model", "canary", v2, "--share", str(SHARE))
    during = posts_on([0, 1, 2, 3], 10, "c")      # under the canary
    probes: list[tuple[int, dict]] = []           # one at a time after `model off`, until v1 answers on 0-1
    after = posts_on([0, 1, 2, 3], 6, "a")         # once v1 is back everywhere
    producer = make_producer(s)

    with workers(s, "classify") as procs, contextlib.closing(producer):
        worker = procs[0]
        wait_for(lambda: log_lines(worker, "candidate v2 loaded: canary, share 0.5") == 1, 120, procs,
                 "the worker to load the canary")
        wait_for(lambda: assigned(worker, s.kafka.topic_enriched) == set(range(PARTITIONS)), 60, procs,
                 "the worker to be assigned every partition")
        send(producer, s, during)
        got = wait_for(lambda: served(s, [p["id"] for _, p in during]), 60, procs, "the canary's results")
        for p, post in during:
            version = v2 if p in CANARY else v1
            assert got[post["id"]] == (version, LABEL[version]), \
                f"partition {p} (canary partitions {sorted(CANARY)}): {post['id']} served by {got[post['id']]}"
        assert not shadow_keys(s), "canary mode shadows nothing (Redis)"
        assert read_topic(s, s.kafka.topic_shadow) == [], "canary mode shadows nothing (topic)"

        # off: the worker drops the candidate at its next reload check; probe partitions 0-1 until v1 answers
        turned_off = time.monotonic()
        assert cli(env, "model", "off", "--reason", "canary drill over").startswith("rollout off")
        switched_after = None
        deadline = turned_off + RELOAD_CHECK_S + 40  # the 5 s timer, plus a busy shared machine
        while switched_after is None:
            assert time.monotonic() < deadline, f"partitions 0-1 still on v2 {deadline - turned_off:.0f} s after off"
            probe = posts_on([len(probes) % 2], 1, f"probe{len(probes)}")
            probes.extend(probe)
            send(producer, s, probe)
            model, label = wait_for(lambda: served(s, [probe[0][1]["id"]]), 30, procs, "a probe's result")[
                probe[0][1]["id"]]
            assert label == LABEL[model], f"{probe[0][1]['id']}: {model} answered {label}"
            if model == v1:
                switched_after = time.monotonic() - turned_off
            time.sleep(0.2)
        assert log_lines(worker, "candidate v2 unloaded (rollout off: canary drill over)") == 1
        send(producer, s, after)
        got_after = wait_for(lambda: served(s, [p["id"] for _, p in after]), 60, procs, "results after off")
        assert set(got_after.values()) == {(v1, LABEL[v1])}, "with the rollout off, v1 serves every partition"
        probed = served(s, [p["id"] for _, p in probes])
        models = [probed[p["id"]][0] for _, p in probes]
        assert models == sorted(models, reverse=True), f"once v1 answered, v2 never again: {models}"
        assert not shadow_keys(s) and read_topic(s, s.kafka.topic_shadow) == []
        assert log_lines(worker, "rolled back") == 0, "nothing here should trip the automatic rollback"

    every = [post for _, post in during + probes + after]
    a = audit(s, every)
    assert_exact(a)  # each post stored once, counted once, per brand, no dead letters
    final = served(s, [p["id"] for p in every])
    expected: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for post in every:
        model, label = final[post["id"]]
        for brand in (*post["brands"], "_all"):
            expected[brand][label] += 1
    assert {b: dict(c) for b, c in brand_counts(s).items()} == {b: dict(c) for b, c in expected.items()}, \
        "each post counted once, under the label of the model that served it"
    assert registry.rollout().mode == "off" and registry.current() == v1
    print(f"canary: {len(during)} posts ({sum(got[p['id']][0] == v2 for _, p in during)} on v2); off -> v1 on "
          f"partitions 0-1 after {switched_after:.1f} s ({len(probes)} probes); {len(after)} posts after; "
          f"{a['counted']} counted for {len(every)} posts; test {time.monotonic() - started:.0f} s")
