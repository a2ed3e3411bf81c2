"""The chaos run at CI size (bench/chaos.py): 3,000 messages with images, duplicates and 5% hostile ones
through two caption and two classify workers while a seeded schedule SIGKILLs workers, stops Redis,
freezes the broker and makes the captioner slow or failing. Real Tansu broker, real redis-server.

Size and seed: AFFECTSTREAM_CHAOS_POSTS (default 3000), AFFECTSTREAM_CHAOS_SEED (default 13); a failure
prints the seed, so the same schedule and posts can be replayed with
``affectstream reliability --chaos --chaos-seed SEED --chaos-model DIR``.
"""
from __future__ import annotations

import os

import pytest

from affectstream.bench.chaos import ChaosConfig, run_chaos, summary
from affectstream.bench.chaos_schedule import ACTIONS
from affectstream.bench.reliability import chaos_row, record

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POSTS = int(os.environ.get("AFFECTSTREAM_CHAOS_POSTS", "3000"))
SEED = int(os.environ.get("AFFECTSTREAM_CHAOS_SEED", "13"))


def test_chaos_run_keeps_every_invariant(tiny_model_dir, tmp_path):
    cfg = ChaosConfig(posts=POSTS, seed=SEED, model_dir=str(tiny_model_dir), workdir=str(tmp_path / "chaos"))
    report = run_chaos(cfg)
    a = report.audit
    row = chaos_row(report)
    record(row.fault, messages=row.messages, results=row.results, dlq=row.dlq, lost=row.lost,
           double_counted=row.double_counted, notes=row.notes, seconds=row.seconds)
    context = f"seed {SEED}, logs {report.logs}\n{summary(report)}"

    assert set(report.applied) == set(ACTIONS), f"not every fault kind was applied: {report.applied}; {context}"
    # every valid post: exactly one stored result, and on the sentiment topic (redeliveries: the same id)
    assert a.lost == 0 and a.stored == a.valid == report.workload["valid"], context
    assert a.extra_keys == 0 and a.topic_extra_ids == 0, context
    assert a.topic_missing == 0 and a.on_topic == a.valid, context
    # brand counts equal a recount from the produced posts and the stored labels
    assert (a.counts_over, a.counts_under) == (0, 0), f"{a.count_mismatches}; {context}"
    # every hostile message in the DLQ with a reason it may end with; no valid post there
    assert a.hostile_in_dlq == a.hostile == report.workload["hostile"], f"{a.hostile_missing}; {context}"
    assert a.hostile_wrong_reason == [] and a.valid_in_dlq == 0, context
    # the failing and slow captioner sent image posts on text-only, never to the DLQ
    assert set(a.image_errors) <= {"None", "caption_timeout", "caption_failed"}, context
    assert report.rss_mb and report.rss_peak_mb <= cfg.rss_limit_mb, context
    assert report.posts_per_s > 0
    assert report.ok, context
