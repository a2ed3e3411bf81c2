"""`affectstream bench --quick` runs end to end and reports every figure (never its speed: timings are
measurements, not tests)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner


@pytest.mark.slow
def test_quick_bench_runs_and_reports_every_figure(tmp_path):
    from affectstream.bench.cli import bench

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(bench, ["--quick", "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())

    assert {"bf16_2048", "fp32_2048"} <= set(r["peaks_gflops"])
    assert set(r["classify"]) == {"minilm", "roberta-base-2l"}
    for c in r["classify"].values():
        assert c["naive_posts_per_s"] > 0 and c["pipeline_posts_per_s"] > 0
        assert set(c["serving_posts_per_s"]) == {"1", "8", "32", "64"}
        assert c["forward_gflops"] > 0 and c["flops_per_post"] > 0
    e2e = r["e2e"]
    assert e2e["max_posts_per_s"] > 0
    assert set(e2e["latency"]) == {"25%", "50%", "80%"}
    assert all(v["n"] > 0 and v["p99_ms"] >= v["p50_ms"] for v in e2e["latency"].values())
    assert e2e["classify_worker_peak_rss_mb"] > 0 and e2e["caption_worker_peak_rss_mb"] > 0
    cap = r["caption"]
    assert cap["offline_images_per_s"] > 0 and cap["vlm_images_per_s"] > 0
    assert all(v > 0 for v in cap["cache_hits_per_s"].values())
    assert {t["target"] for t in r["targets"]} >= {"offline describer images/s"}
    for heading in ("classify, model only", "end to end", "captioning", "memory", "targets"):
        assert heading in result.output
    assert ("GPU section: skipped" in result.output) == (r["device"] != "cuda")
    assert r["brands"]["mentions"]["posts_per_s"] > 0 and "brands" in result.output
