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
    for heading in ("classify, model only", "end to end through both stages", "captioning",
                    "peak resident set (VmHWM): classify worker", "shadow scoring", "mpnet serving", "targets"):
        assert heading in result.output
    # the model-lifecycle rows: shadow's cost measured with its goal; MPNet served or skipped with its reason
    assert r["shadow"]["shadowed_posts"] > 0 and r["shadow"]["off_cpu_s_per_1k_posts"] > 0
    assert "shadow at 10%: classify CPU cost" in {t["target"] for t in r["targets"]}
    assert r["mpnet"].get("skipped") or r["mpnet"]["serving_posts_per_s"] > 0
    assert ("GPU section: skipped" in result.output) == (r["device"] != "cuda")
    assert r["brands"]["mentions"]["posts_per_s"] > 0 and "brands" in result.output

    # the machine is recorded: CPU model, matrix-unit flags, load
    assert set(r["machine"]["isa"]) >= {"amx_int8", "amx_bf16", "avx512_bf16", "avx512_vnni"}
    assert len(r["machine"]["load_averages_start"]) == 3 and "ISA:" in result.output
    # int8 and fp32 FFN-shape peaks next to bf16 for every shape measured
    assert {"int8_ffn_minilm", "fp32_ffn_minilm", "bf16_ffn_minilm"} <= set(r["peaks_gflops"])
    # peers in the same run, same posts and batch sizes; serving on every backend; ratios and goals
    peers = r["peers"]
    assert set(peers["rows"]) == {"1", "8", "32", "64"}
    for row in peers["rows"].values():
        assert set(row["peers"]) == {"pipeline-bf16", "ort-fp32", "ort-int8"} and min(row["peers"].values()) > 0
        assert set(row["serving"]) == {"torch", "onnx-fp32", "onnx-int8"} and min(row["serving"].values()) > 0
        assert row["ratio_auto"] > 0
    assert peers["auto_backend"] in {"torch", "onnx-fp32", "onnx-int8"}
    assert peers["forward"]["forward_share"] > 0
    assert all(v["peak_rss_mb"] > 0 for v in peers["rss_mb"].values())
    goals = {t["target"] for t in r["targets"]}
    assert any(g.startswith("serving (") and "best peer" in g and "@ batch 8" in g for g in goals)
    assert not any("@ batch 1" == g[-len("@ batch 1"):] for g in goals)  # the goal starts at batch 8
    assert "peers —" in result.output and "roberta-base-2l" in r["classify"]
