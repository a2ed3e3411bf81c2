"""``/metrics`` on a worker's web port after a streamed run (real broker, real Redis, worker subprocess):
the Prometheus counters match what was sent."""
from __future__ import annotations

import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from affectstream.streaming.tools.workers import WorkerProcess
from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.tools.services import free_port
from tests.servers import workers_running
from tests.test_pipeline import make_settings, read_topic, stored_ids, text_posts, wait_for

pytestmark = pytest.mark.integration


def scrape(port: int) -> tuple[str, dict[tuple[str, tuple], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        content_type, text = response.headers["Content-Type"], response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return content_type, samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_endpoint_counts_every_result_and_every_dead_letter_by_reason(broker, redis_server,
                                                                              tiny_model_dir):
    port = free_port()
    s = make_settings(broker, redis_server, tiny_model_dir, web_enabled=True, web_port=port)
    good = text_posts(25, prefix="m")
    bad = [b"{not json", orjson.dumps({"text": "no id"}), orjson.dumps({"id": "blank", "text": "  "}),
           orjson.dumps({"id": "nope", "text": 7})]
    worker = WorkerProcess(s, "all")
    with workers_running([worker], log_lines=60):
        produce_lines(s, [orjson.dumps(p) for p in good[:12]] + bad + [orjson.dumps(p) for p in good[12:]])
        wait_for(lambda: len(stored_ids(s)) >= len(good) and len(read_topic(s, s.kafka.topic_dlq)) >= len(bad), 90,
                 [worker], "every result and dead letter")
        content_type, samples = scrape(port)
        log = worker.log_tail(400)

    # the start-up heap is frozen once the stages have started, and collections are timed
    assert "start-up heap frozen" in log
    assert value(samples, "affectstream_gc_pause_seconds_count", generation="2") >= 1

    assert content_type.startswith("text/plain; version=0.0.4")
    n, k = len(good), len(bad)
    assert value(samples, "affectstream_posts_total", stage="caption", outcome="forwarded") == n
    assert value(samples, "affectstream_posts_total", stage="caption", outcome="dlq") == k
    assert value(samples, "affectstream_posts_total", stage="classify", outcome="result") == n
    assert value(samples, "affectstream_posts_total", stage="classify", outcome="dlq") == 0
    assert sum(v for (name, _), v in samples.items() if name == "affectstream_results_total") == n
    dlq = {dict(labels)["reason"]: v for (name, labels), v in samples.items() if name == "affectstream_dlq_total"}
    assert dlq == {"invalid_json": 1, "missing_id": 1, "empty_post": 1, "bad_text": 1}
    assert all(dict(labels)["stage"] == "parse"
               for (name, labels), _ in samples.items() if name == "affectstream_dlq_total")
    # one observation per micro-batch; the batch sizes add up to the messages each stage consumed
    assert value(samples, "affectstream_batch_size_sum", stage="caption") == n + k
    assert value(samples, "affectstream_batch_size_sum", stage="classify") == n
    assert value(samples, "affectstream_batch_seconds_count", stage="classify") >= 1
    assert value(samples, "affectstream_end_to_end_latency_seconds_count") == n
    assert value(samples, "affectstream_model_info", version="tiny-bert") == 1
    assert value(samples, "affectstream_caption_cache_total", result="hit") == 0  # text only: no lookups
