"""Canary routing, automatic rollback and promotion of the registry's candidate, against the real redis-server
(the classify stage without Kafka; stand-in models from ``test_shadow``)."""
from __future__ import annotations

import asyncio
import collections
import logging

import orjson
import pytest

from affectstream.streaming.worker import metrics
from affectstream.streaming.worker.redis_keys import minute_bucket
from affectstream.streaming.worker.rollout import Candidate, RollbackPolicy, verdict, Measures
from affectstream.streaming.worker.shadow import shadowed
from affectstream.streaming.worker.sinks.redis import RedisSink
from tests.servers import settings_for
from tests.test_redis_sink import T0
from tests.test_shadow import TEXTS, posts, registry_with, run_batches, stage_for, words_label

SMALL = RollbackPolicy(min_calls=3, min_posts=20, min_corrections=5)


def partitions_of(batch: list[bytes], n: int = 4) -> list[int]:
    return [i % n for i in range(len(batch))]


@pytest.mark.parametrize("share, expected", [(0.25, {0}), (0.26, {0, 1}), (0.5, {0, 1}), (0.01, {0}),
                                             (1.0, {0, 1, 2, 3}), (0.0, set())])
def test_canary_partitions_are_the_first_ceil_share_times_partitions(share, expected):
    assert Candidate(predictor=None, mode="canary", share=share, partitions=4).canary_partitions == expected


def test_verdict_needs_the_minimum_sample_before_judging():
    policy = RollbackPolicy()
    quiet = Measures(error_rate=(1.0, policy.min_calls - 1), dlq_rate=(None, 0), disagreement=(0.9, 10),
                     analyst=(1.0, policy.min_corrections - 1))
    assert verdict(quiet, policy) is None
    loud = Measures(error_rate=(0.01, 500), dlq_rate=(0.0, 500), disagreement=(0.2, 500), analyst=(0.6, 40))
    assert verdict(loud, policy) == ("analyst", "analyst 0.600 > 0.5 over 40")


def test_canary_partitions_are_served_by_the_candidate_and_counted(redis_server, tmp_path):
    settings = settings_for(redis=redis_server, captioner="none", partitions=4)
    registry = registry_with(tmp_path, "words", "negative", "canary", 0.5)
    batch = posts(40, prefix="k")

    async def run():
        stage = stage_for(settings, registry)
        sink = RedisSink(settings)
        await stage.start()
        out = await stage.process(batch, partitions_of(batch))
        await sink.write(out.items)
        counts = await sink.brand_counts("_all", minute_bucket(T0))
        await stage.aclose()
        await sink.close()
        return out, counts

    out, counts = asyncio.run(run())
    models = {r.id: r.model for r in out.results}
    assert len(models) == 40
    assert {m for i, m in models.items() if int(i.split("-")[1]) % 4 < 2} == {"v2"}
    assert {m for i, m in models.items() if int(i.split("-")[1]) % 4 >= 2} == {"v1"}
    expected = collections.Counter("negative" if i % 4 < 2 else words_label(TEXTS[i % len(TEXTS)]) for i in range(40))
    assert counts == dict(expected), "canary results count like any other"
    assert not out.shadow


def test_a_canary_that_cannot_classify_leaves_its_posts_to_the_deployed_model_and_is_rolled_back(
        redis_server, tmp_path, caplog):
    settings = settings_for(redis=redis_server, captioner="none", partitions=4)
    registry = registry_with(tmp_path, "words", "fail", "canary", 0.25)
    batch = posts(40, prefix="kf")
    before = metrics.REGISTRY.get_sample_value("affectstream_rollbacks_total",
                                               {"candidate": "v2", "reason": "error_rate"}) or 0.0

    async def run():
        stage = stage_for(settings, registry)
        await stage.start()
        stage.slot.watch.policy = SMALL
        out = await stage.process(batch, partitions_of(batch))
        stats = stage.slot.stats
        await stage.check_rollout()
        candidate_after = stage.candidate
        await stage.aclose()
        return out, stats, candidate_after

    with caplog.at_level(logging.WARNING, "affectstream.rollout"):
        out, stats, candidate_after = asyncio.run(run())
    assert {r.model for r in out.results} == {"v1"} and len(out.results) == 40 and not out.dlq
    assert (stats.canary_posts, stats.canary_dlq) == (10, 10)
    assert candidate_after is None
    rollout = registry.rollout()
    assert (rollout.mode, rollout.candidate, rollout.current) == ("off", None, "v1")
    assert rollout.reason.startswith("auto rollback: error_rate")
    assert "candidate v2 rolled back (canary mode)" in caplog.text
    assert (metrics.REGISTRY.get_sample_value("affectstream_rollbacks_total",
                                              {"candidate": "v2", "reason": "error_rate"}) or 0.0) - before == 1


def test_a_shadow_candidate_that_disagrees_with_most_posts_is_rolled_back(redis_server, tmp_path):
    settings = settings_for(redis=redis_server, captioner="none")
    registry = registry_with(tmp_path, "words", "negative", "shadow", 1.0)

    async def run():
        stage = stage_for(settings, registry)
        sink = RedisSink(settings)
        await stage.start()
        stage.slot.watch.policy = SMALL
        await run_batches(stage, sink, [posts(12, prefix="d1")], [])
        await stage.check_rollout()
        kept = stage.candidate is not None  # 12 < min_posts: not judged yet
        await run_batches(stage, sink, [posts(30, prefix="d2")], [])
        await stage.check_rollout()
        await stage.aclose()
        await sink.close()
        return kept, stage.candidate

    kept, candidate = asyncio.run(run())
    assert kept and candidate is None
    assert registry.rollout().reason.startswith("auto rollback: disagreement")


@pytest.mark.parametrize("analysts_agree", [True, False])
def test_a_candidate_that_disagrees_with_the_analysts_corrections_is_rolled_back(redis_server, tmp_path,
                                                                                   analysts_agree):
    """Corrections (``feedback_latest``, as the feedback intake writes them) for posts the candidate scored
    in shadow: the candidate says ``negative`` everywhere; the analysts say ``negative`` (agree) or
    ``positive`` (disagree)."""
    settings = settings_for(redis=redis_server, captioner="none")
    registry = registry_with(tmp_path, "neutral", "negative", "shadow", 1.0)
    policy = RollbackPolicy(min_calls=3, min_posts=10_000, min_corrections=5)  # only the analysts can decide
    batch = posts(12, prefix=f"a{analysts_agree}")
    ids = [orjson.loads(p)["id"] for p in batch]

    async def run():
        stage = stage_for(settings, registry)
        sink = RedisSink(settings)
        await stage.start()
        stage.slot.watch.policy = policy
        await run_batches(stage, sink, [batch], [])
        keys = settings.keys
        for n, post_id in enumerate(ids[:8]):
            label = "negative" if analysts_agree else "positive"
            correction = {"post_id": post_id, "target": None, "label": label, "old_label": "neutral",
                          "model": "v1", "analyst": "ana", "ts": T0 + n}
            await sink.client.hset(keys.feedback_latest(post_id), "", orjson.dumps(correction))
            await sink.client.zadd(keys.feedback_index(), {post_id: T0 + n})
        measured = await stage.slot.watch.measure(stage.candidate)
        await stage.check_rollout()
        await stage.aclose()
        await sink.close()
        return measured, stage.candidate

    measured, candidate = asyncio.run(run())
    assert measured.analyst == ((0.0 if analysts_agree else 1.0), 8)
    assert (candidate is not None) is analysts_agree
    assert registry.rollout().mode == ("shadow" if analysts_agree else "off")


def test_workers_deciding_at_once_roll_back_once(redis_server, tmp_path):
    settings = settings_for(redis=redis_server, captioner="none")
    registry = registry_with(tmp_path, "words", "fail", "shadow", 1.0)

    async def run():
        stages = [stage_for(settings, registry) for _ in range(3)]
        for stage in stages:
            await stage.start()
            stage.slot.watch.policy = SMALL
            for _ in range(SMALL.min_calls):
                await stage.process(posts(16, prefix="once"))  # 16 shadowed posts: one candidate call
        await asyncio.gather(*(stage.check_rollout() for stage in stages))
        deciders = sum(stage.candidate is None for stage in stages)
        await asyncio.gather(*(stage.check_rollout() for stage in stages))  # the next tick: the rollout is off
        out = [deciders] + [stage.candidate for stage in stages]
        for stage in stages:
            await stage.aclose()
        return out

    deciders, *candidates = asyncio.run(run())
    assert deciders == 1, "one worker wrote the rollback; the others found it done"
    assert candidates == [None, None, None], "and dropped the candidate at their next check"
    rollbacks = [h for h in registry.history() if h.get("event") == "rollout" and "auto rollback" in h["reason"]]
    assert len(rollbacks) == 1, rollbacks


def test_promoting_the_shadow_candidate_takes_over_the_loaded_model(redis_server, tmp_path, caplog):
    settings = settings_for(redis=redis_server, captioner="none")
    registry = registry_with(tmp_path, "words", "negative", "shadow", 0.3)
    batch = posts(20, prefix="pr")

    async def run():
        stage = stage_for(settings, registry)
        await stage.start()
        loaded = stage.candidate.predictor
        before = await stage.process(batch)
        gathered = await stage.flush_shadow()
        registry.promote("v2", "shadow looked good")
        await stage.check()
        after = await stage.process(batch)
        after_gathered = await stage.flush_shadow()
        serving, candidate = stage.predictor, stage.candidate
        await stage.aclose()
        return loaded, serving, candidate, (before, before.shadow + gathered), (after, after.shadow + after_gathered)

    with caplog.at_level(logging.INFO, "affectstream.classify"):
        loaded, serving, candidate, before, after = asyncio.run(run())
    assert serving is loaded and candidate is None, "the candidate already in memory serves everything now"
    assert "model reloaded: v1 -> v2" in caplog.text
    (before, shadow_before), (after, shadow_after) = before, after
    assert {r.model for r in before.results} == {"v1"} and len(shadow_before) == sum(
        shadowed(r.id, 0.3) for r in before.results) > 0
    assert {r.model for r in after.results} == {"v2"} and not shadow_after
    registry.rollback("regret")
    assert registry.current() == "v1"


def test_a_candidate_that_cannot_be_loaded_is_rolled_back_after_three_tries(redis_server, tmp_path, caplog):
    settings = settings_for(redis=redis_server, captioner="none")
    registry = registry_with(tmp_path, "words", "negative", "shadow", 0.5)
    (registry.version_dir("v2") / "config.json").write_text("{half a config")  # a broken copy

    async def run():
        stage = stage_for(settings, registry)
        await stage.start()  # the first try
        modes = [registry.rollout().mode]
        for _ in range(2):
            await stage.check()
            modes.append(registry.rollout().mode)
        out = await stage.process(posts(5, prefix="lf"))
        await stage.aclose()
        return modes, out

    with caplog.at_level(logging.WARNING, "affectstream.rollout"):
        modes, out = asyncio.run(run())
    assert modes == ["shadow", "shadow", "off"]
    assert registry.rollout().reason.startswith("auto rollback: load_failed 3 times")
    assert {r.model for r in out.results} == {"v1"} and len(out.results) == 5, "serving never stopped"


def test_process_events_hands_each_events_partition_to_the_canary(redis_server, tmp_path):
    """What the agent loop calls with faust events (``message.value``, ``message.partition``)."""
    settings = settings_for(redis=redis_server, captioner="none", partitions=4)
    registry = registry_with(tmp_path, "words", "negative", "canary", 0.25)
    batch = posts(8, prefix="ev")
    events = [type("Event", (), {"message": type("Message", (), {"value": raw, "partition": i % 4})()})()
              for i, raw in enumerate(batch)]

    async def run():
        stage = stage_for(settings, registry)
        await stage.start()
        out = await stage.process_events(events)
        without = await stage.process(batch)  # a caller that cannot say: the deployed model serves all
        await stage.aclose()
        return out, without

    out, without = asyncio.run(run())
    assert [r.model for r in out.results] == ["v2" if i % 4 == 0 else "v1" for i in range(8)]
    assert {r.model for r in without.results} == {"v1"}
