"""Drivers end to end on the real broker and Redis with a worker subprocess: a planted burst of "refund"
complaints about one brand amid normal traffic gives one alert, for that brand, naming "refund" among its
drivers; every post delivered again leaves the term counts exact; /api/drivers serves 1 h, 24 h and 7 d."""
from __future__ import annotations

import itertools
import time
import urllib.request

import orjson
import pytest

from affectstream.bench.term_audit import audit_terms
from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.tools.services import free_port
from affectstream.streaming.tools.workers import WorkerProcess
from affectstream.streaming.worker.redis_client import sync_redis
from affectstream.streaming.worker.redis_keys import minute_bucket
from affectstream.streaming.worker.result import Result
from tests.servers import workers_running
from tests.test_alerts import pick_texts
from tests.test_pipeline import make_settings, read_topic, stored_ids, wait_for

pytestmark = pytest.mark.integration

M0 = 1764410400000  # 2025-11-29 10:00 UTC
BRANDS = ["acme", "nimbus", "voltcar"]
WORDS = ["love", "hate", "screen", "battery", "coffee", "great", "awful", "slow", "fast", "broken", "today", "price"]


def refund_texts(model_dir: str) -> list[str]:
    """Texts with "refund" that the tiny random model labels negative with "refund" in its rationale."""
    from affectstream.model.predictor import BatchPredictor

    predictor = BatchPredictor.from_directory(model_dir, device="cpu")
    candidates = ["refund " + " ".join(t) for t in itertools.permutations(WORDS, 2)]
    picked = []
    for text, p in zip(candidates, predictor.predict([(t, "") for t in candidates])):
        margin = p.scores["negative"] - max(v for k, v in p.scores.items() if k != "negative")
        if margin > 0.1 and "refund" in [w.text for w in p.rationale]:
            picked.append(text)
    assert len(picked) >= 4, "the tiny model must label some refund texts negative"
    return picked[:8]


def stored_results(s, ids) -> list[Result]:
    r = sync_redis(s)
    try:
        return [Result.from_json(v) for v in r.mget([s.keys.post(i) for i in sorted(ids)]) if v is not None]
    finally:
        r.close()


def get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return orjson.loads(response.read())


def test_a_refund_burst_alerts_its_brand_naming_refund_and_redeliveries_leave_term_counts_exact(
        broker, redis_server, tiny_model_dir):
    negative, other = pick_texts(str(tiny_model_dir))
    refunds = refund_texts(str(tiny_model_dir))
    port = free_port()
    s = make_settings(broker, redis_server, tiny_model_dir, web_enabled=True, web_port=port)

    def post(i: int, brand: str, minute: int, texts: list[str]) -> dict:
        return {"id": f"{brand}-{minute}-{i}", "text": texts[i % len(texts)], "brands": [brand],
                "created_at": M0 + minute * 60_000 + i * 1000}

    # five calm minutes (1 negative in 6 per brand), then minute 5: acme 20 refund complaints of 24
    quiet = [post(i, b, m, negative if i == 0 else other) for m in range(5) for b in BRANDS for i in range(6)]
    burst = [post(i, "acme", 5, refunds if i >= 4 else other) for i in range(24)]
    burst += [post(i, b, 5, negative if i < 4 else other) for b in BRANDS[1:] for i in range(24)]
    posts = quiet + burst
    worker = WorkerProcess(s, "all")
    with workers_running([worker]):
        produce_lines(s, [orjson.dumps(p) for p in quiet])
        wait_for(lambda: len(stored_ids(s)) >= len(quiet), 90, [worker], "the calm period's results")
        produce_lines(s, [orjson.dumps(p) for p in burst])
        wait_for(lambda: len(stored_ids(s)) >= len(posts), 60, [worker], "the burst's results")
        wait_for(lambda: read_topic(s, s.kafka.topic_alerts), 30, [worker], "an alert on the alerts topic")
        produce_lines(s, [orjson.dumps(p) for p in posts])            # every post delivered again
        wait_for(lambda: len(read_topic(s, s.kafka.topic_sentiment)) >= 2 * len(posts), 60, [worker],
                 "the redeliveries' results")
        time.sleep(3 * 2.0)  # a few more alert ticks: nothing else may fire
        alerts = [orjson.loads(r.value) for r in read_topic(s, s.kafka.topic_alerts)]
        hour = get(port, "/api/drivers?brand=acme&minutes=60")
        wait_for(lambda: get(port, "/api/drivers?brand=acme&minutes=1440")["posts"] == 54, 30, [worker],
                 "the 24 h window")
        day, week = (get(port, f"/api/drivers?brand=acme&minutes={m}") for m in (1440, 10080))
        audit = audit_terms(s, stored_results(s, {p["id"] for p in posts}))

    assert [(a["brand"], a["minute"]) for a in alerts] == [("acme", minute_bucket(M0 + 5 * 60_000))]
    assert "refund" in [d["term"] for d in alerts[0]["drivers"]], alerts[0]["drivers"]
    assert "— " in alerts[0]["summary"] and "refund" in alerts[0]["summary"]
    refund = next(d for d in alerts[0]["drivers"] if d["term"] == "refund")
    assert refund["examples"] and all(e.startswith("acme-5-") for e in refund["examples"])
    assert audit.ok and audit.terms > 0, audit
    assert hour["unit"] == "minute" and hour["labels"]["negative"]["against"] == "the brand's other posts"
    assert "refund" in [d["term"] for d in hour["labels"]["negative"]["drivers"]], "no hour before: vs positive"
    assert day["unit"] == week["unit"] == "hour" and day["posts"] == week["posts"] == 54
