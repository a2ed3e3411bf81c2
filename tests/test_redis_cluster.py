"""Redis Cluster: a real 3-master cluster of redis-server processes on 127.0.0.1 (``tests.servers``), a real
broker and a real classify worker subprocess with ``redis_cluster=True``. Every script's keys share one hash
slot (else the cluster answers CROSSSLOT), counts are exact, a redelivered post counts once, and a master
SIGKILLed mid-stream and started again on its folder loses nothing."""
from __future__ import annotations

import asyncio
import collections
import threading
import time

import orjson
import pytest

from affectstream.streaming.monitor.alerts import AlertRule
from affectstream.streaming.monitor.hub import LiveHub
from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.worker.redis_client import sync_redis
from affectstream.streaming.worker.redis_keys import ALL_BRANDS, minute_bucket
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.sinks.redis import RedisSink
from tests.servers import settings_for
from tests.test_pipeline import lines_of, make_settings, read_topic, text_posts, wait_for, workers
from tests.test_redis_sink import EXPECTED, MINUTE, batch

pytestmark = pytest.mark.integration

# ids and brands from posts may hold braces, which pick a key's hash slot: they must still work
ODD = [{"id": f"odd{{{i}}}-{i}", "text": "love it", "brands": ["we{ird}", "}{"], "created_at": 1764410400000}
       for i in range(6)] + [{"id": "}{", "text": "so slow", "brands": ["acme"], "created_at": 1764410460000}]


def cluster_settings(broker, redis_cluster, model_dir):
    return make_settings(broker, redis_cluster, model_dir, redis_cluster=True)


def stored_results(s, ids) -> dict[str, dict]:
    """id -> the stored first result, for every id that has one."""
    r = sync_redis(s)
    try:
        ids = sorted(ids)
        values = r.mget_nonatomic([s.keys.post(i) for i in ids])
        return {i: orjson.loads(v) for i, v in zip(ids, values) if v is not None}
    finally:
        r.close()


def bucket_counts(s) -> dict[tuple[str, str], collections.Counter]:
    """Every brand-minute bucket of the run, found by SCAN on every master."""
    r = sync_redis(s)
    try:
        out = {}
        for key in r.scan_iter(match=s.keys.brand_pattern(), count=1000):
            parsed = s.keys.parse_brand_key(key.decode())
            assert parsed is not None, key
            out[parsed] = collections.Counter({k.decode(): int(v) for k, v in r.hgetall(key).items()})
        return out
    finally:
        r.close()


def expected_counts(results) -> dict[tuple[str, str], collections.Counter]:
    """Each stored first result once in each of its buckets, with the label it counts there."""
    out: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for raw in results:
        result = Result.from_dict(raw)
        for brand, label in result.bucket_labels().items():
            out[(brand, minute_bucket(result.event_ms))][label] += 1
    return dict(out)


def markers(s, ids) -> collections.Counter:
    r = sync_redis(s)
    try:
        return collections.Counter(r.mget_nonatomic([s.keys.seen(i) for i in sorted(ids)]))
    finally:
        r.close()


def test_sink_counts_once_and_the_monitor_reads_and_alerts_on_a_cluster(redis_cluster):
    """In process: the sink's scripts (loaded again after a SCRIPT FLUSH on every master), the dashboard's brand
    index (SCAN on every master) and queries, and the alert claim (marker, list and outbox in one script) on
    the cluster client."""
    s = settings_for(redis_url=redis_cluster.url, redis_cluster=True)

    async def run():
        sink = RedisSink(s)
        returned = [await sink.write(batch()[:4])]
        await sink.client.script_flush()     # on every master: what restarted masters look like
        returned += [await sink.write(batch()) for _ in range(2)]
        counts = {b: await sink.brand_counts(b, MINUTE) for b in ("acme", "other", "_all")}
        await sink.close()
        hub = LiveHub(s)
        await hub._seed_index()               # no index yet: built by SCAN over every master
        page = await hub.brands(minutes=5, end=MINUTE)
        alert = {"id": f"acme:{MINUTE}", "brand": "acme", "minute": MINUTE}
        claims = [await hub.outbox.claim(alert, AlertRule(), 3600, 0) for _ in range(2)]
        outbox = await hub.client.zcard(s.keys.alerts_outbox)
        await hub.stop()
        return returned, counts, page, claims, outbox

    returned, counts, page, claims, outbox = asyncio.run(run())
    assert returned == [{f"p{i}" for i in range(4)}, {f"p{i}" for i in range(4, 10)}, set()]
    assert counts == EXPECTED
    assert set(page["brands"]) == {"acme", "other"} and page["all"]["total"] == EXPECTED["_all"]
    assert claims[0] is not None and claims[1] is None and outbox == 1


def test_stream_through_a_cluster_counts_exactly_and_redeliveries_count_once(broker, redis_cluster,
                                                                             tiny_model_dir):
    s = cluster_settings(broker, redis_cluster, tiny_model_dir)
    posts = text_posts(300, prefix="cl") + ODD
    ids = {p["id"] for p in posts}
    with workers(s, "classify") as procs:
        produce_lines(s, lines_of(posts), topic=s.kafka.topic_enriched)
        wait_for(lambda: len(stored_results(s, ids)) == len(ids), 120, procs, "a result for every post")
        produce_lines(s, lines_of(posts), topic=s.kafka.topic_enriched)  # every post delivered again
        wait_for(lambda: len(read_topic(s, s.kafka.topic_sentiment)) >= 2 * len(posts), 120, procs, "the second pass")
        stored = stored_results(s, ids)
        counts = bucket_counts(s)

    assert set(stored) == ids
    assert counts == expected_counts(stored.values())
    assert sum(counts[(ALL_BRANDS, m)].total() for b, m in counts if b == ALL_BRANDS) == len(posts)
    assert sum(n.total() for (b, _), n in counts.items() if b == "we{ird}") == 6
    assert markers(s, ids) == {b"1": len(ids)}, "every post counted and announced"


def test_a_master_killed_mid_stream_and_restarted_loses_nothing(broker, redis_cluster, tiny_model_dir):
    s = cluster_settings(broker, redis_cluster, tiny_model_dir)
    posts = text_posts(1200, prefix="kill")
    ids = {p["id"] for p in posts}
    outage = {}

    with workers(s, "classify") as procs:
        producer = threading.Thread(target=produce_lines, args=(s, lines_of(posts)),
                                    kwargs={"topic": s.kafka.topic_enriched, "rate": 50.0}, daemon=True)
        producer.start()
        wait_for(lambda: len(stored_results(s, ids)) >= 300, 120, procs, "300 results before the crash")
        outage["stored_before"] = len(stored_results(s, ids))
        redis_cluster.kill_node(1)                      # SIGKILL a master: a third of the slots gone
        outage["killed_at"] = time.monotonic()
        time.sleep(5.0)                                 # > cluster-node-timeout: the cluster fails
        redis_cluster.start_node(1)                     # same port, same folder: AOF and nodes.conf
        redis_cluster.wait_ok()
        back = time.monotonic()
        outage["down_s"] = round(back - outage["killed_at"], 1)
        outage["stored_when_back"] = len(stored_results(s, ids))
        producer.join(60)
        wait_for(lambda: len(stored_results(s, ids)) == len(ids), 180, procs, "a result for every post")
        outage["all_stored_s_after_back"] = round(time.monotonic() - back, 1)
        time.sleep(1.0)                                 # the last batch's announce step
        stored = stored_results(s, ids)
        counts = bucket_counts(s)
        log = open(procs[0].log_path, errors="replace").read()

    outage.pop("killed_at")
    print(f"master restart: {outage}; results {len(stored)}/{len(posts)}")
    assert set(stored) == ids
    assert counts == expected_counts(stored.values())
    assert sum(n.total() for (b, _), n in counts.items() if b == ALL_BRANDS) == len(posts)
    assert markers(s, ids) == {b"1": len(ids)}
    assert "redis write failed" in log, "the sink must have waited the outage out"


def stored_results_alive(s, ids) -> dict[str, dict]:
    """Like ``stored_results``, but empty while the cluster refuses reads (a master is down)."""
    try:
        return stored_results(s, ids)
    except Exception:  # noqa: BLE001 - CLUSTERDOWN / connection refused: the point of the outage
        return {}
