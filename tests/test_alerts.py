"""Sentiment-shift alerts: the pure rule on synthetic minute buckets, the atomic cooldown in a real Redis,
and the worker's alert timer end to end (real broker, real Redis, worker subprocess)."""
from __future__ import annotations

import asyncio
import math
import time
import urllib.request

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from affectstream.streaming.monitor.alerts import (SEND_LEASE_MS, AlertOutbox, AlertRule, detect_shift, make_alert,
                                                   two_proportion_z, windows_for)
from affectstream.streaming.tools.workers import WorkerProcess
from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.worker.redis_client import async_redis as redis_client
from affectstream.streaming.worker.redis_keys import minute_bucket
from affectstream.streaming.tools.services import free_port
from affectstream.streaming.monitor.hub import LiveHub
from tests.servers import settings_for, workers_running
from tests.test_pipeline import make_settings, read_topic, stored_ids, wait_for

RULE = AlertRule()
M0 = 1764410400000  # 2025-11-29 10:00 UTC: event time is explicit, so no test waits for real minutes


def calm(n: int = 10, negative: int = 2) -> dict[str, int]:
    return {"negative": negative, "neutral": n - negative}


# --- the rule --------------------------------------------------------------------------------------

def test_a_negative_burst_against_a_calm_baseline_fires():
    shift = detect_shift([{"negative": 20, "neutral": 5}], [calm()] * 30)
    assert shift.fired and shift.why == "fired"
    assert (shift.n, shift.hits, shift.baseline_n, shift.baseline_hits) == (25, 20, 300, 60)
    p = 80 / 325
    expected = (20 / 25 - 60 / 300) / math.sqrt(p * (1 - p) * (1 / 25 + 1 / 300))
    assert shift.z == pytest.approx(expected) and shift.z > 3


def test_a_calm_minute_does_not_fire():
    shift = detect_shift([calm(25, 6)], [calm()] * 30)
    assert not shift.fired and shift.z < 3


def test_a_burst_below_the_minimum_volume_does_not_fire():
    shift = detect_shift([{"negative": 10}], [calm()] * 30)
    assert not shift.fired and shift.why.startswith("window volume")


def test_a_brand_without_enough_history_does_not_fire():
    shift = detect_shift([{"negative": 30}], [calm(10, 0)])
    assert not shift.fired and shift.why.startswith("baseline volume")


def test_a_significant_but_tiny_rise_does_not_fire():
    # huge volume: +4 points is "significant" (z > 3) but below the minimum rise
    shift = detect_shift([calm(20_000, 4_800)], [calm(10_000, 2_000)] * 30)
    assert shift.z > 3 and not shift.fired and shift.why.startswith("rise")


def test_empty_or_constant_buckets_give_zero_z():
    assert two_proportion_z(0, 0, 0, 0) == 0.0
    assert two_proportion_z(20, 20, 30, 30) == 0.0  # everything negative: no variance, no evidence


@given(st.integers(0, 200), st.integers(1, 200), st.integers(0, 2000), st.integers(1, 2000))
def test_the_rule_never_fires_unless_the_share_rose(x1, n1, x0, n0):
    x1, x0 = min(x1, n1), min(x0, n0)
    shift = detect_shift([{"negative": x1, "neutral": n1 - x1}], [{"negative": x0, "neutral": n0 - x0}])
    if x1 / n1 <= x0 / n0:
        assert not shift.fired and shift.z <= 1e-9


def test_windows_cross_hour_and_day_boundaries():
    window, baseline = windows_for("202512010001", AlertRule(window_minutes=2, baseline_minutes=3))
    assert window == ["202512010000", "202512010001"]
    assert baseline == ["202511302357", "202511302358", "202511302359"]


# --- the cooldown claim and the hub's evaluation, on a real Redis ----------------------------------

def test_two_workers_claiming_the_same_alert_fire_once_and_the_cooldown_holds(redis_server):
    s = settings_for(None, redis_server)

    async def run() -> list[bool]:
        client = redis_client(s)
        shift = detect_shift([{"negative": 25}], [calm()] * 30)
        first = make_alert("acme", "202511291010", shift, RULE, 0)
        try:
            both = [m is not None for m in
                    await asyncio.gather(*(AlertOutbox(client, s.keys).claim(first, RULE, 3600) for _ in range(2)))]
            later = make_alert("acme", "202511291025", shift, RULE, 0)      # 15 min later: cooldown
            after = make_alert("acme", "202511291040", shift, RULE, 0)      # 30 min later: fires again
            other = make_alert("nimbus", "202511291010", shift, RULE, 0)    # brands are independent
            rest = [await AlertOutbox(client, s.keys).claim(a, RULE, 3600) is not None for a in (later, after, other)]
            stored = await client.lrange(s.keys.alerts, 0, -1)
            assert [orjson.loads(a)["id"] for a in stored] == ["nimbus:202511291010", "acme:202511291040",
                                                              "acme:202511291010"]
            return sorted(both) + rest
        finally:
            await client.aclose()

    assert asyncio.run(run()) == [False, True, False, True, True]


def test_hubs_of_two_workers_evaluating_the_same_burst_send_one_alert(redis_server):
    s = settings_for(None, redis_server)
    minutes = [minute_bucket(M0 + i * 60_000) for i in range(31)]

    async def run() -> list[dict]:
        client = redis_client(s)
        for m in minutes[:30]:
            await client.hset(s.keys.brand("acme", m), mapping=calm())
            await client.hset(s.keys.brand("nimbus", m), mapping=calm())
        await client.hset(s.keys.brand("acme", minutes[30]), mapping={"negative": 22, "neutral": 3})
        await client.hset(s.keys.brand("nimbus", minutes[30]), mapping=calm(25, 5))
        await client.aclose()
        sent: list[dict] = []

        async def send(alert: dict) -> None:
            sent.append(alert)

        hubs = [LiveHub(s), LiveHub(s)]
        for hub in hubs:
            hub.dirty = {("acme", minutes[30]), ("nimbus", minutes[30]), ("acme", minutes[10])}
        await asyncio.gather(*(hub.evaluate_alerts(send) for hub in hubs))
        for hub in hubs:
            await hub.stop()
        return sent

    sent = asyncio.run(run())
    assert [(a["brand"], a["minute"]) for a in sent] == [("acme", minutes[30])]
    assert sent[0]["hits"] == 22 and sent[0]["baseline_n"] == 300 and sent[0]["z"] >= 3


def test_a_backfilled_older_minute_neither_moves_the_cooldown_back_nor_re_arms_it(redis_server):
    s = settings_for(None, redis_server)
    shift = detect_shift([{"negative": 25}], [calm()] * 30)

    async def run() -> list[bool]:
        client = redis_client(s)
        try:
            fired = []
            for minute in ("202511291200",   # fires
                           "202511291100",   # backfill, an hour older, no alert near it: fires
                           "202511291220",   # 20 min after the 12:00 alert: the backfill must not re-arm it
                           "202511291110",   # 10 min after the backfilled alert: quiet too
                           "202511291140",   # 40 after 11:00 but 20 before 12:00: quiet
                           "202511291230"):  # 30 after 12:00: fires
                claimed = await AlertOutbox(client, s.keys).claim(make_alert("acme", minute, shift, RULE, 0), RULE, 3600)
                fired.append(claimed is not None)
            marker = (await client.get(s.keys.alert_last("acme"))).decode()
            assert max(int(m) for m in marker.split(",")) == 29406990  # 12:30, the newest alert, stays last
            return fired
        finally:
            await client.aclose()

    assert asyncio.run(run()) == [True, True, False, False, False, True]


def test_a_claimed_alert_waits_in_the_outbox_until_sent_and_a_dead_senders_lease_runs_out(redis_server):
    s = settings_for(None, redis_server)
    shift = detect_shift([{"negative": 25}], [calm()] * 30)

    async def run() -> None:
        client = redis_client(s)
        try:
            outbox = AlertOutbox(client, s.keys)
            message = await outbox.claim(make_alert("acme", "202511291010", shift, RULE, 0), RULE, 3600, now_ms=M0)
            assert await client.zrange(s.keys.alerts_outbox, 0, -1) == [message]
            assert await outbox.take_due(M0 + SEND_LEASE_MS - 1) == []   # the claimer is sending it
            assert await outbox.take_due(M0 + SEND_LEASE_MS) == [message]  # ... or died: resend
            assert await outbox.take_due(M0 + SEND_LEASE_MS + 1) == []   # leased again, to one taker
        finally:
            await client.aclose()

    asyncio.run(run())


def test_an_alert_whose_send_fails_is_delivered_at_the_next_tick_once_keyed_by_its_id(broker, redis_server):
    from aiokafka import AIOKafkaProducer

    from affectstream.streaming.worker.kafka_config import bootstrap_servers, create_topics, kafka_client_kwargs

    s = settings_for(broker, redis_server)
    s = s.replace(topic_alerts=f"alerts-{s.kafka.app_id.rsplit('-', 1)[-1]}")
    create_topics(s)
    minutes = [minute_bucket(M0 + i * 60_000) for i in range(31)]

    async def run() -> tuple[list[int], list[dict]]:
        client = redis_client(s)
        for m in minutes[:30]:
            await client.hset(s.keys.brand("acme", m), mapping=calm())
        await client.hset(s.keys.brand("acme", minutes[30]), mapping={"negative": 22, "neutral": 3})
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(s), acks="all",
                                    **kafka_client_kwargs(s, "aiokafka"))
        await producer.start()
        attempts: list[str] = []

        async def send(alert: dict) -> None:  # the broker "fails" the first send; later ones are real
            attempts.append(alert["id"])
            if len(attempts) == 1:
                raise ConnectionError("broker unavailable")
            await producer.send_and_wait(s.kafka.topic_alerts, key=alert["id"].encode(), value=orjson.dumps(alert))

        hub = LiveHub(s)
        try:
            hub.dirty = {("acme", minutes[30])}
            fired = await hub.evaluate_alerts(send)                      # tick 1: claimed, the send fails
            queued = await client.zcard(s.keys.alerts_outbox)
            await hub.evaluate_alerts(send)                              # tick 2: resent from the outbox
            left = await client.zcard(s.keys.alerts_outbox)
            await hub.evaluate_alerts(send)                              # tick 3: nothing left to send
            return [len(fired), queued, left, len(attempts)], fired
        finally:
            await producer.stop()
            await hub.stop()
            await client.aclose()

    counts, fired = asyncio.run(run())
    assert counts == [1, 1, 0, 2]
    records = read_topic(s, s.kafka.topic_alerts)
    assert [(r.key, orjson.loads(r.value)["id"]) for r in records] == [(f"acme:{minutes[30]}".encode(),
                                                                       fired[0]["id"])]


# --- end to end ------------------------------------------------------------------------------------

def pick_texts(model_dir: str) -> tuple[list[str], list[str]]:
    """Texts the tiny random model labels negative / not negative with a clear margin (its labels mean
    nothing, but they are deterministic, and the alert rule only sees labels)."""
    import itertools

    from affectstream.model.predictor import BatchPredictor

    predictor = BatchPredictor.from_directory(model_dir, device="cpu")
    words = ["love", "hate", "screen", "battery", "coffee", "great", "awful", "slow", "fast", "broken", "today",
             "price"]
    candidates = [" ".join(t) for t in itertools.permutations(words, 3)][:300]
    negative, other = [], []
    for text, p in zip(candidates, predictor.predict([(t, "") for t in candidates])):
        margin = p.scores["negative"] - max(v for k, v in p.scores.items() if k != "negative")
        (negative if margin > 0.1 else other if margin < -0.1 else []).append(text)
    assert len(negative) >= 5 and len(other) >= 5, "the tiny model must give both kinds of label"
    return negative[:5], other[:5]


def test_a_negative_burst_for_one_brand_gives_exactly_one_alert_for_it(broker, redis_server, tiny_model_dir):
    negative, other = pick_texts(str(tiny_model_dir))
    port = free_port()
    s = make_settings(broker, redis_server, tiny_model_dir, web_enabled=True, web_port=port)
    brands = ["acme", "nimbus", "voltcar"]

    def post(i: int, brand: str, minute: int, bad: bool) -> dict:
        texts = negative if bad else other
        return {"id": f"{brand}-{minute}-{i}", "text": texts[i % len(texts)], "brands": [brand],
                "created_at": M0 + minute * 60_000 + i * 1000}

    # five calm minutes (1 negative in 6 per brand), then minute 5: acme 20 negative of 24, the others calm
    quiet = [post(i, b, m, bad=i == 0) for m in range(5) for b in brands for i in range(6)]
    burst = [post(i, "acme", 5, bad=i >= 4) for i in range(24)]
    burst += [post(i, b, 5, bad=i < 4) for b in brands[1:] for i in range(24)]
    worker = WorkerProcess(s, "all")
    with workers_running([worker]):
        produce_lines(s, [orjson.dumps(p) for p in quiet])
        wait_for(lambda: len(stored_ids(s)) >= len(quiet), 90, [worker], "the calm period's results")
        produce_lines(s, [orjson.dumps(p) for p in burst])
        wait_for(lambda: len(stored_ids(s)) >= len(quiet) + len(burst), 60, [worker], "the burst's results")
        wait_for(lambda: read_topic(s, s.kafka.topic_alerts), 30, [worker], "an alert on the alerts topic")
        time.sleep(3 * 2.0)  # a few more alert ticks: nothing else may fire
        alerts = [orjson.loads(r.value) for r in read_topic(s, s.kafka.topic_alerts)]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/alerts", timeout=5) as response:
            shown = orjson.loads(response.read())

    assert [(a["brand"], a["minute"]) for a in alerts] == [("acme", minute_bucket(M0 + 5 * 60_000))]
    assert [r.key for r in read_topic(s, s.kafka.topic_alerts)] == [alerts[0]["id"].encode()]  # key: the alert id
    assert alerts[0]["hits"] == 20 and alerts[0]["n"] == 24 and alerts[0]["baseline_n"] == 30
    assert [a["id"] for a in shown] == [alerts[0]["id"]]
