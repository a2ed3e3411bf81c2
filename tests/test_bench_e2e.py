"""The end-to-end bench at its smallest size, through both stages (a real caption worker with the offline
describer, a real classify worker, the embedded broker and Redis): what it measures must be whole — every
post produced arrives once in Redis and once on the sentiment topic, image posts carry captions, the warm
pass is answered by the caption cache. Its speed is the bench's business, never asserted here."""
from __future__ import annotations

import pytest

from affectstream.bench import e2e

pytestmark = pytest.mark.integration


def _levels(workload: dict) -> list[tuple[str, dict]]:
    return [("burst", workload["burst"]), *workload["latency"].items()]


def test_e2e_bench_delivers_every_post_once_through_both_stages(tiny_model_dir):
    from affectstream.bench.workload import sample_texts

    said: list[str] = []
    r = e2e.run(tiny_model_dir, burst=24, load_seconds=1.0, loads=(0.5,), batch_max=8, batch_window_s=0.05,
                device="cpu", threads=1, pairs=[(t, "") for t in sample_texts()[:40]], caption_images=1,
                image_burst=8, image_every=2, say=said.append, goal_rounds=2)

    assert set(r["workloads"]) == {"text", "images-cold", "images-warm"}
    assert r["max_posts_per_s"] == r["workloads"]["text"]["max_posts_per_s"] > 0
    assert r["batch_compute_ms"] > 0 and r["budget_ms"] > r["batch_compute_ms"]
    for name, workload in r["workloads"].items():
        assert workload["max_posts_per_s"] > 0
        for level, v in _levels(workload):
            where = f"{name} {level}"
            assert v["n"] > 0, where
            assert v["lost_redis"] == 0 and v["lost_topic"] == 0, where
            assert v["duplicates_redis"] == 0 and v["duplicates_topic"] == 0, where
            assert 0 < v["p50_ms"] <= v["p95_ms"] <= v["p99_ms"], where
            assert 0 < v["topic"]["p50_ms"] <= v["topic"]["p99_ms"], where
            # each hop is a difference of two clocks of this machine: never negative beyond a clock tick
            assert all(h["p50_ms"] >= -1 for h in v["hops"].values()), where
            assert v["image_posts_without_caption"] == 0, where
            assert (v["image_posts"] > 0) == (name != "text"), where

    text, cold, warm = (r["workloads"][k] for k in ("text", "images-cold", "images-warm"))
    assert all(v["described"] == v["cache_hits"] == 0 for _, v in _levels(text))
    # cold: every image new, so described by the offline describer; warm: the same images, from the cache
    for level, v in _levels(cold):
        assert v["described"] == v["image_posts"] and v["cache_hits"] == 0, level
    for level, v in _levels(warm):
        assert v["described"] == 0 and v["cache_hits"] == v["image_posts"], level
    assert r["classify_worker_peak_rss_mb"] > 0 and r["caption_worker_peak_rss_mb"] > 0
    assert "|" in e2e.table(r) and any("images-warm" in line for line in said)
    # the goal's level again, twice, each time on a fresh pipeline (broker, Redis, workers): every post once
    goal = r["goal"]
    assert goal["level"] == "50%" and goal["rate"] == 0.5 * text["max_posts_per_s"]
    assert [g["p99_ms"] for g in goal["rounds"]] == goal["p99_rounds_ms"] and len(goal["rounds"]) == 2
    for g in goal["rounds"]:
        assert g["n"] > 0 and g["lost_redis"] == g["lost_topic"] == g["duplicates_redis"] == 0
    assert min(goal["p99_rounds_ms"]) <= goal["p99_median_ms"] <= max(goal["p99_rounds_ms"])
    assert "each round on a fresh broker" in e2e.table(r)
