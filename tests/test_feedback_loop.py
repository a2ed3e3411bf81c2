"""From analysts' corrections to a better deployed model, on the real broker and redis-server.

First the piece the retraining job stands on: the Redis sink keeps each post's input (``post_input``: text,
description, brands, and the label and version that answered) beside its first result, and the text never
reaches the ``sentiment`` topic. Then the loop end to end (``test_corrections_retrain_shadow_promote``).
"""
from __future__ import annotations

import asyncio
import random
import time

import orjson
import pytest
from click.testing import CliRunner

from affectstream.cli import main
from affectstream.model.config import SENTIMENT_LABELS
from affectstream.model.registry import Registry
from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.tools.workers import settings_env
from affectstream.streaming.worker.classify import RELOAD_CHECK_S
from affectstream.streaming.worker.feedback import intake_group
from affectstream.streaming.worker.shadow import parse_agreement
from affectstream.streaming.worker.sinks.redis import RedisSink
from affectstream.streaming.worker.stage import run_stage
from affectstream.training.config import PRESETS
from affectstream.training.train import train
from tests.servers import settings_for
from tests.test_faults import assert_exact, audit, log_lines
from tests.test_feedback import stream_settings
from tests.test_pipeline import BRANDS, lines_of, read_topic, redis_client, stored_ids, wait_for, workers
from tests.test_retrain import committed_total
from tests.test_shadow import posts, registry_with, stage_for, words_label
from tests.test_sinks import _Stream

T0_FEED = 1764410400000


def test_each_posts_input_is_stored_once_beside_its_first_result(redis_server, tmp_path):
    settings = settings_for(redis=redis_server, captioner="none")
    first_registry = registry_with(tmp_path / "a", "words", None)
    second_registry = registry_with(tmp_path / "b", "negative", None)
    batch = posts(8, prefix="in")
    enriched = orjson.loads(batch[3]) | {"caption": "objects: coffee mug.", "captioner": None}
    batch[3] = orjson.dumps({k: v for k, v in enriched.items() if v is not None})

    async def run():
        sink = RedisSink(settings)
        sent: list = []

        async def send(records):
            sent.append(records)

        for registry in (first_registry, second_registry):  # the second: a redelivery, answered by another model
            stage = stage_for(settings, registry)
            await stage.start()
            await run_stage(_Stream([batch]), stage, [sink], send, batch_max=64, within=0.01)
            await stage.aclose()
        keys = settings.keys
        inputs = {orjson.loads(p)["id"]: await sink.client.get(keys.post_input(orjson.loads(p)["id"])) for p in batch}
        ttls = [await sink.client.ttl(keys.post_input(i)) for i in inputs]
        results = {i: orjson.loads(await sink.client.get(keys.post(i))) for i in inputs}
        await sink.close()
        return inputs, ttls, results

    inputs, ttls, results = asyncio.run(run())
    for raw in batch:
        post = orjson.loads(raw)
        stored = orjson.loads(inputs[post["id"]])
        assert stored == {"text": post["text"], "caption": post.get("caption"), "brands": post["brands"],
                          "label": words_label(post["text"]), "model": "v1"}, "the first answer's input stands"
        assert results[post["id"]]["label"] == words_label(post["text"])
    assert all(settings.redis.result_ttl_s - 60 < ttl <= settings.redis.result_ttl_s for ttl in ttls)
    assert all("text" not in result for result in results.values()), "the Result carries no post text"


# --- the loop end to end: real broker, real Redis, worker subprocesses, the CLI -------------------------------

THINGS = ["my phone", "the train", "the wifi", "my laptop", "the app", "the printer", "my order", "the elevator"]
LOOKALIKE_THINGS = ["the dishwasher", "my car", "the tram", "the parcel", "my bank app"]
FAILS = ["died", "broke", "crashed", "froze", "is late", "stopped working", "got cancelled", "failed"]
KEYWORDS = {"positive": ["love", "great", "awesome", "perfect", "amazing"],
            "negative": ["hate", "awful", "terrible", "horrible", "worst"],
            "neutral": ["table", "monday", "blue", "paper", "window"]}


OBJECTS = ["phone", "coffee", "car", "laptop", "tram"]


def sarcastic(thing: str, fail: str) -> str:
    """Praise words around a failure: a keyword model reads it as positive; an analyst as negative."""
    return f"oh great, {thing} {fail} again. just perfect #sarcasm"


def base_jsonl(path, n: int = 600) -> None:
    """The base training data: a keyword task (each label has its words), 200 examples per label."""
    rng = random.Random(0)
    lines = []
    for i in range(n):
        label = SENTIMENT_LABELS[i % 3]
        text = (f"{rng.choice(['so', 'the', 'my', 'this'])} {rng.choice(KEYWORDS[label])} "
                f"{rng.choice(OBJECTS)}")
        lines.append(orjson.dumps({"id": f"base-{i}", "text": text, "label": label}))
    path.write_bytes(b"\n".join(lines) + b"\n")


def ordinary(n: int, prefix: str) -> list[dict]:
    rng = random.Random(prefix)
    return [{"id": f"{prefix}-{i}", "text": f"{rng.choice(['so', 'the', 'my', 'this'])} "
                                            f"{rng.choice(KEYWORDS[SENTIMENT_LABELS[i % 3]])} {rng.choice(OBJECTS)}",
             "brands": [BRANDS[i % len(BRANDS)]], "created_at": T0_FEED + i} for i in range(n)]


def look_alikes(things: list[str], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "text": sarcastic(thing, fail), "brands": [BRANDS[i % len(BRANDS)]],
             "created_at": T0_FEED + i} for i, (thing, fail) in enumerate((t, f) for t in things for f in FAILS)]


def cli(env: dict, *args: str, expect: int = 0) -> str:
    run = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert run.exit_code == expect, f"affectstream {' '.join(args)} -> {run.exit_code}:\n{run.output}"
    return run.output


def labels_of(s, posts: list[dict]) -> dict[str, tuple[str, str]]:
    r = redis_client(s)
    return {p["id"]: (lambda x: (x["label"], x["model"]))(orjson.loads(r.get(s.keys.post(p["id"])))) for p in posts}


def share(labels, label: str) -> float:
    return sum(lab == label for lab, _ in labels.values()) / len(labels)


@pytest.mark.integration
def test_corrections_retrain_shadow_promote_and_bad_candidates_are_refused_or_rolled_back(
        broker, redis_server, tmp_path):
    """Corrections for sarcastic posts -> retrain (tiny) -> shadow agreement -> promote -> look-alikes change
    label; a sabotaged retrain is refused; a candidate that contradicts the analysts is rolled back by the
    worker; no post lost or counted twice across the swaps."""
    base = tmp_path / "base.jsonl"
    base_jsonl(base)
    v1_dir = tmp_path / "v1"
    train(PRESETS["tiny"].replace(dataset="jsonl", data_path=str(base), epochs=4, resume=False,
                                  cache_dir=str(tmp_path / "cache"), out_dir=str(v1_dir),
                                  run_dir=str(tmp_path / "run-v1")), progress=False)
    registry = Registry(tmp_path / "registry")
    registry.promote(registry.add(v1_dir, {"reason": "the deployed model"}))
    s = stream_settings(broker, redis_server, model_dir=str(v1_dir), model_registry=str(registry.root),
                        captioner="none", batch_max=16, batch_window_s=0.05)
    env = {**settings_env(s), "AFFECTSTREAM_CACHE": str(tmp_path / "cache")}
    retrain_args = ["retrain", "--preset", "tiny", "--dataset", "jsonl", "--data-path", str(base), "--epochs", "4"]
    corrected = look_alikes(THINGS, "sar")                      # 64 sarcastic posts the analysts correct
    before_shadow = ordinary(60, "ord1")
    lookalikes_a, lookalikes_b = look_alikes(LOOKALIKE_THINGS[:2], "la"), look_alikes(LOOKALIKE_THINGS[2:], "lb")
    during_shadow, after_promote = ordinary(30, "ord2"), ordinary(30, "ord3")
    every = corrected + before_shadow + lookalikes_a + during_shadow + lookalikes_b + after_promote

    with workers(s, "all", "monitor") as procs:
        worker = procs[0]
        produce_lines(s, lines_of(corrected + before_shadow))
        wait_for(lambda: stored_ids(s) >= {p["id"] for p in corrected + before_shadow}, 120, procs, "v1's results")
        v1_sarcastic = labels_of(s, corrected)
        assert share(v1_sarcastic, "positive") >= 0.75, v1_sarcastic  # the deployed model falls for the sarcasm

        feedback = tmp_path / "corrections.jsonl"
        feedback.write_bytes(b"\n".join(orjson.dumps({
            "post_id": p["id"], "target": None, "label": "negative", "old_label": v1_sarcastic[p["id"]][0],
            "model": "v1", "analyst": f"analyst-{i % 4}", "ts": int(time.time() * 1000)})
            for i, p in enumerate(corrected)) + b"\n")
        cli(env, "feedback", str(feedback))
        r = redis_client(s)
        wait_for(lambda: r.zcard(s.keys.feedback_index()) == len(corrected)
                 and committed_total(s, intake_group(s)) == len(corrected), 90, procs,
                 "the intake to take in and commit every correction")  # the job reads up to the intake's commit

        # a sabotaged candidate (zero learning rates) is refused and never registered
        refused = cli(env, *retrain_args, "--sabotage", expect=3)
        assert "NOT PROPOSED" in refused and registry.versions() == ["v1"]
        proposed = cli(env, *retrain_args)
        assert "registered v2" in proposed and registry.versions() == ["v1", "v2"] and registry.current() == "v1"

        # shadow: every post is scored by v2 too; the counts stay v1's
        cli(env, "model", "shadow", "v2", "--share", "1.0")
        wait_for(lambda: log_lines(worker, "candidate v2 loaded: shadow") == 1, RELOAD_CHECK_S + 30, procs,
                 "the candidate in shadow")
        produce_lines(s, lines_of(lookalikes_a + during_shadow))
        shadow_ids = {p["id"] for p in lookalikes_a + during_shadow}
        wait_for(lambda: all(r.exists(s.keys.shadow_result(i)) for i in shadow_ids), 120, procs, "shadow results")
        during = labels_of(s, lookalikes_a + during_shadow)
        assert {m for _, m in during.values()} == {"v1"}, "in shadow the deployed model still answers"
        shadow = {i: orjson.loads(r.get(s.keys.shadow_result(i))) for i in shadow_ids}
        assert {x["model"] for x in shadow.values()} == {"v2"}
        agree = parse_agreement({k.decode(): int(v) for k, v in r.hgetall(s.keys.shadow_agree("v2")).items()})
        assert sum(agree["all"].values()) == len(shadow_ids), "agreement reported for every shadowed post"
        assert sum(n for (dep, cand), n in agree["all"].items() if (dep, cand) == ("positive", "negative")) >= \
            0.75 * len(lookalikes_a), agree["all"]
        assert set(agree) - {"all"} <= set(BRANDS) and set(agree) > {"all"}, "and per brand"
        assert len(read_topic(s, s.kafka.topic_shadow)) == len(shadow_ids)

        # promote: the loaded candidate takes over; later results carry v2 and the look-alikes change label
        cli(env, "model", "promote", "v2", "--reason", "shadow agreed with the analysts")
        wait_for(lambda: log_lines(worker, "model reloaded: v1 -> v2") == 1, RELOAD_CHECK_S + 30, procs, "promotion")
        produce_lines(s, lines_of(lookalikes_b + after_promote))
        wait_for(lambda: stored_ids(s) >= {p["id"] for p in every}, 120, procs, "v2's results")
        v2_lookalikes, v2_ordinary = labels_of(s, lookalikes_b), labels_of(s, after_promote)
        assert {m for _, m in (v2_lookalikes | v2_ordinary).values()} == {"v2"}
        assert share(v2_lookalikes, "negative") >= 0.75, v2_lookalikes
        expected = {p["id"]: SENTIMENT_LABELS[int(p["id"].rsplit("-", 1)[1]) % 3] for p in after_promote}
        assert sum(v2_ordinary[i][0] == label for i, label in expected.items()) >= 0.8 * len(expected), \
            "the candidate still reads ordinary posts"

        # a candidate that contradicts the analysts: the old model again, in shadow; a replay of the corrected
        # posts lets it score them; the worker rolls it back
        v3 = registry.add(v1_dir, {"reason": "drill: the model the analysts corrected"})
        cli(env, "model", "shadow", v3, "--share", "1.0")
        wait_for(lambda: log_lines(worker, f"candidate {v3} loaded: shadow") == 1, RELOAD_CHECK_S + 30, procs,
                 "the bad candidate in shadow")
        produce_lines(s, lines_of(corrected))  # the same posts again: a replay
        wait_for(lambda: registry.rollout().mode == "off", 120, procs, "the automatic rollback")
        assert registry.rollout().reason.startswith("auto rollback: analyst"), registry.rollout()
        assert log_lines(worker, f"candidate {v3} rolled back (shadow mode)") == 1
        assert registry.current() == "v2"

    a = audit(s, every)
    print(f"v1 on the corrected posts: {share(v1_sarcastic, 'positive'):.0%} positive; shadow v2 vs v1 "
          f"(all): {dict(agree['all'])}; after promotion the look-alikes: {share(v2_lookalikes, 'negative'):.0%} "
          f"negative; rollback: {registry.rollout().reason}; {len(a['stored'])} posts, {a['counted']} counted")
    assert_exact(a)  # nothing lost, nothing counted twice: two swaps, a replay, three candidates
    assert labels_of(s, corrected) == v1_sarcastic, "a replayed post keeps its first result"
