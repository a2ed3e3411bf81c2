"""The Redis result sink and the caption cache against a real redis-server: idempotent counts, live channel,
outage retry, cache round trip."""
import asyncio
import logging
import threading
import time

import orjson
import pytest
import redis
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from affectstream.streaming.worker.redis_client import async_redis as redis_client
from affectstream.streaming.worker.redis_keys import minute_bucket
from affectstream.streaming.worker.caption_cache import CaptionCache
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.sinks import SinkItem
from affectstream.streaming.worker.sinks.redis import RedisSink, SinkStopped
from affectstream.streaming.tools.services import free_port, start_redis
from tests.servers import settings_for

T0 = 1_795_946_400_000  # 2026-11-29T10:00:00Z
MINUTE = "202611291000"


def result(i: int, label: str = "positive", brands=("acme",), created_at: int | None = T0) -> SinkItem:
    return SinkItem.of(Result(id=f"p{i}", label=label, scores={label: 1.0}, brands=list(brands), model="v1",
                              created_at=created_at, processed_at=T0 + 60_000, latency_ms=60_000))


def targeted(i: int, label: str, targets: dict[str, str], created_at: int | None = T0) -> SinkItem:
    """A result about several brands: post-level ``label``, and per brand its own target label."""
    entries = [{"brand": b, "label": t, "scores": {t: 1.0}, "rationale": [{"text": b, "score": 1.0, "source": "text"}],
                "mentions": [{"brand": b, "name": b.title(), "alias": b, "source": "text", "span": [0, len(b)]}]}
               for b, t in targets.items()]
    return SinkItem.of(Result(id=f"p{i}", label=label, scores={label: 1.0}, brands=list(targets), targets=entries,
                              model="v1", created_at=created_at, processed_at=T0 + 60_000, latency_ms=60_000))


def batch() -> list[SinkItem]:
    return ([result(i, "positive") for i in range(5)] + [result(i, "negative") for i in range(5, 8)]
            + [result(8, "neutral", brands=("acme", "other")), result(9, "neutral", brands=())])


async def write_and_count(settings, results, times: int = 1) -> tuple[RedisSink, dict]:
    sink = RedisSink(settings)
    for _ in range(times):
        await sink.write(results)
    counts = {b: await sink.brand_counts(b, MINUTE) for b in ("acme", "other", "_all")}
    return sink, counts


EXPECTED = {"acme": {"positive": 5, "negative": 3, "neutral": 1}, "other": {"neutral": 1},
            "_all": {"positive": 5, "negative": 3, "neutral": 2}}


def test_minute_bucket_is_utc():
    assert minute_bucket(T0 + 59_999) == MINUTE


def test_results_are_stored_and_counted_per_brand_minute(redis_server):
    settings = settings_for(redis=redis_server)

    async def run():
        sink, counts = await write_and_count(settings, batch())
        stored = await sink.client.get(settings.keys.post("p3"))
        ttl = await sink.client.ttl(settings.keys.brand("acme", MINUTE))
        keys = await sink.client.keys(settings.keys.post("*"))
        await sink.close()
        return counts, stored, ttl, keys

    counts, stored, ttl, keys = asyncio.run(run())
    assert counts == EXPECTED
    assert stored == result(3).json and Result.from_json(stored) == result(3).result
    assert 0 < ttl <= settings.redis.bucket_ttl_s
    assert len(keys) == 10


def test_redelivered_post_does_not_count_twice(redis_server):
    settings = settings_for(redis=redis_server)

    async def run():
        sink, counts = await write_and_count(settings, batch(), times=3)
        await sink.close()
        return counts

    assert asyncio.run(run()) == EXPECTED


def test_scripts_flushed_from_the_server_are_loaded_again_by_the_sink_shadow_and_alerts(redis_server):
    """SCRIPT FLUSH (what a restarted server looks like): the next calls load their scripts again and count
    exactly (redis-py's registered scripts; no step is lost or run twice)."""
    from affectstream.streaming.monitor.alerts import AlertOutbox, AlertRule
    from affectstream.streaming.worker.shadow import ShadowItem, ShadowWriter

    settings = settings_for(redis=redis_server)
    first, second = batch()[:5], batch()[5:]

    async def run():
        sink = RedisSink(settings)
        shadow = ShadowWriter(settings, None, client=sink.client)
        outbox = AlertOutbox(sink.client, settings.keys)
        await sink.write(first)
        await sink.client.script_flush()
        fresh = await sink.write(second + first)
        await sink.client.script_flush()
        await shadow.write([ShadowItem(i.result, i.result) for i in first])
        await sink.client.script_flush()
        claimed = await outbox.claim({"id": f"acme:{MINUTE}", "brand": "acme", "minute": MINUTE}, AlertRule(), 60)
        counts = {b: await sink.brand_counts(b, MINUTE) for b in ("acme", "other", "_all")}
        agree = await sink.client.hgetall(settings.keys.shadow_agree("v1"))
        await sink.close()
        return fresh, claimed, counts, agree

    fresh, claimed, counts, agree = asyncio.run(run())
    assert fresh == {f"p{i}" for i in range(5, 10)}
    assert claimed is not None and counts == EXPECTED
    assert agree[b"all:positive:positive"] == b"5"


def test_each_brand_counts_its_own_target_label_and_all_the_post_level_label(redis_server):
    """"Switched from acme to nimbus, nimbus is so much better": negative toward acme, positive toward nimbus,
    the post as a whole neutral. Each (post, bucket) counts once, however often the batch is written."""
    settings = settings_for(redis=redis_server)
    items = [targeted(1, "neutral", {"acme": "negative", "nimbus": "positive"}),
             targeted(2, "positive", {"nimbus": "positive"}),
             targeted(3, "negative", {"acme": "negative", "nimbus": "negative"})]

    async def run():
        sink = RedisSink(settings)
        for _ in range(2):
            await sink.write(items)
        counts = {b: await sink.brand_counts(b, MINUTE) for b in ("acme", "nimbus", "_all")}
        await sink.close()
        return counts

    assert asyncio.run(run()) == {"acme": {"negative": 2}, "nimbus": {"positive": 2, "negative": 1},
                                  "_all": {"neutral": 1, "positive": 1, "negative": 1}}


def test_a_post_without_brands_counts_under_the_untargeted_bucket_only_when_set(redis_server):
    async def run(untargeted: str):
        settings = settings_for(redis=redis_server, untargeted_brand=untargeted)
        sink = RedisSink(settings)
        await sink.write([result(1, "negative", brands=()), result(2, "positive", brands=("acme",))])
        counts = {b: await sink.brand_counts(b, MINUTE) for b in ("acme", "_none", "_all")}
        await sink.close()
        return counts

    assert asyncio.run(run("")) == {"acme": {"positive": 1}, "_none": {}, "_all": {"negative": 1, "positive": 1}}
    assert asyncio.run(run("_none")) == {"acme": {"positive": 1}, "_none": {"negative": 1},
                                         "_all": {"negative": 1, "positive": 1}}


def test_bucket_labels_of_results_with_and_without_targets():
    multi = targeted(1, "neutral", {"acme": "negative", "nimbus": "positive"}).result
    assert multi.bucket_labels() == {"acme": "negative", "nimbus": "positive", "_all": "neutral"}
    assert multi.bucket_labels("_none") == multi.bucket_labels()   # a post with brands is not untargeted
    old = result(2, "positive", brands=("acme", "other")).result    # written before targets: brands only
    assert old.bucket_labels() == {"acme": "positive", "other": "positive", "_all": "positive"}
    assert result(3, "negative", brands=()).result.bucket_labels("_none") == {"_none": "negative", "_all": "negative"}
    # a stored result's JSON reads back the same; a malformed or missing targets field reads as none
    assert Result.from_json(targeted(4, "neutral", {"acme": "negative"}).json).bucket_labels()["acme"] == "negative"
    raw = orjson.loads(old.to_json())
    for bad in ({"targets": None}, {"targets": "x", "targets_overflow": "2"}, {"targets": [{"label": 1}, 5]}):
        r = Result.from_dict({**raw, **bad})
        assert r.bucket_labels() == old.bucket_labels() and type(r.targets_overflow) is int
    del raw["targets"], raw["targets_overflow"]
    assert Result.from_dict(raw) == old


def test_unknown_created_at_uses_processed_minute(redis_server):
    settings = settings_for(redis=redis_server)

    async def run():
        sink = RedisSink(settings)
        await sink.write([result(1, created_at=None)])
        counts = await sink.brand_counts("acme", minute_bucket(T0 + 60_000))
        await sink.close()
        return counts

    assert asyncio.run(run()) == {"positive": 1}


def test_every_result_is_published_on_the_live_channel(redis_server):
    settings = settings_for(redis=redis_server)

    async def run():
        sink = RedisSink(settings)
        pubsub = sink.client.pubsub()
        await pubsub.subscribe(settings.keys.live)
        await pubsub.get_message(timeout=1.0)  # subscribe confirmation
        await sink.write([result(1), result(2)])
        received = []
        deadline = time.monotonic() + 5
        while len(received) < 2 and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message:
                received.append(orjson.loads(message["data"])["id"])
        await pubsub.aclose()
        await sink.close()
        return received

    assert asyncio.run(run()) == ["p1", "p2"]


def test_write_retries_through_an_outage_and_counts_exactly(caplog):
    port = free_port()
    server = start_redis(port)
    settings = settings_for(redis=server)
    restarted = threading.Event()

    async def run():
        sink = RedisSink(settings)
        await sink.write([result(0)])            # warm connection, then the server goes away
        server.stop()
        task = asyncio.create_task(sink.write(batch()))
        await asyncio.sleep(1.0)
        assert not task.done(), "write must block while Redis is down, not give up"
        restart = await asyncio.get_running_loop().run_in_executor(None, start_redis, port)
        restarted.set()
        await asyncio.wait_for(task, 20)
        counts = {b: await sink.brand_counts(b, MINUTE) for b in ("acme", "other", "_all")}
        await sink.close()
        return restart, counts

    caplog.set_level(logging.WARNING, logger="affectstream.streaming.worker.sinks.redis")
    restart, counts = asyncio.run(run())
    try:
        assert restarted.is_set()
        assert counts == EXPECTED  # the fresh server holds exactly one copy of the batch
        assert any("retry" in r.getMessage() for r in caplog.records)
    finally:
        restart.stop()


def test_stop_abandons_a_retrying_write():
    server = start_redis()
    settings = settings_for(redis=server)
    server.stop()

    async def run():
        sink = RedisSink(settings)
        task = asyncio.create_task(sink.write([result(1)]))
        await asyncio.sleep(0.5)
        sink.stop()
        with pytest.raises(SinkStopped):
            await asyncio.wait_for(task, 10)
        await sink.client.aclose()

    asyncio.run(run())


def test_caption_cache_round_trip_and_outage_tolerance(redis_server):
    settings = settings_for(redis=redis_server)

    async def run():
        cache = CaptionCache(settings)
        assert await cache.get_caption("abc", "offline") is None
        await cache.put_caption("abc", "offline", "a cat on a sofa")
        assert await cache.get_caption("abc", "offline") == "a cat on a sofa"
        assert await cache.get_caption("abc", "vlm:blip") is None   # captioner is part of the key
        assert await cache.client.exists(settings.keys.caption("offline", "abc"))
        await cache.close()

        down = CaptionCache(settings_for(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
        assert await down.get_caption("abc", "offline") is None   # no raise, no cache
        await down.put_caption("abc", "offline", "x")
        await down.close()

    asyncio.run(run())


def test_redis_client_uses_password_from_settings():
    server = start_redis(password="pw-1")
    try:
        async def run():
            client = redis_client(settings_for(redis_url=f"redis://127.0.0.1:{server.port}/0",
                                               redis_password="pw-1"))
            pong = await client.ping()
            await client.aclose()
            return pong

        assert asyncio.run(run())
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0)).ping()
    finally:
        server.stop()


def test_passing_refusals_are_retried_and_bugs_are_not(redis_server):
    """Real replies from a real redis-server: OOM under noeviction is retried until the limit is raised;
    WRONGTYPE (a bug) raises at once, without a retry."""
    from affectstream.streaming.worker.sinks.redis import is_retryable

    settings = settings_for(redis=redis_server)
    admin = redis.Redis.from_url(redis_server.url)

    async def run():
        sink = RedisSink(settings)
        await sink.write([result(0)])
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")  # below anything in use: every write is refused
        try:
            task = asyncio.create_task(sink.write([result(1)]))
            await asyncio.sleep(1.0)
            assert not task.done() and sink.stalled, "an OOM refusal must be retried, not raised"
        finally:
            admin.config_set("maxmemory", "0")
        fresh = await asyncio.wait_for(task, 10)
        assert not sink.stalled
        await sink.client.set(settings.keys.brand("_all", MINUTE), "not a hash")
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await sink.write([result(2)])
        assert time.monotonic() - started < 1.0
        await sink.close()
        return fresh

    assert asyncio.run(run()) == {"p1"}
    assert is_retryable(redis.exceptions.ResponseError(
        "ERR Error running script (call to f_x): @user_script:2: -OOM command not allowed when used memory"))
    assert is_retryable(redis.exceptions.ResponseError("BUSY Redis is busy running a script"))
    assert is_retryable(redis.exceptions.ResponseError("MASTERDOWN Link with MASTER is down"))
    assert not is_retryable(redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"))
    assert not is_retryable(redis.exceptions.ResponseError("ERR syntax error"))


ODD_TEXTS = st.text(alphabet=st.sampled_from("ab{}:#"), min_size=1, max_size=8)


@hypothesis_settings(max_examples=300, deadline=None)
@given(post_id=ODD_TEXTS, other_id=ODD_TEXTS, brand=ODD_TEXTS, other_brand=ODD_TEXTS)
def test_every_script_touches_keys_of_one_hash_slot(post_id, other_id, brand, other_brand):
    """Redis Cluster refuses a script whose keys lie in two slots (CROSSSLOT). Ids and brands come from posts
    and may hold braces, which pick a key's slot; the keys stay distinct for distinct ids and brands."""
    from redis.crc import key_slot

    from affectstream.streaming.monitor.alerts import claim_keys as alert_claim_keys
    from affectstream.streaming.monitor.rollup import rollup_keys
    from affectstream.streaming.worker.redis_keys import RedisKeys
    from affectstream.streaming.worker.sinks.redis import announce_keys, claim_keys, count_keys

    keys = RedisKeys("as:")
    labels = ("negative", "positive")
    for script_keys in (claim_keys(keys, post_id), count_keys(keys, brand, MINUTE, labels),
                        announce_keys(keys, post_id), rollup_keys(keys, brand, MINUTE[:10], labels),
                        alert_claim_keys(keys, brand), [*alert_claim_keys(keys, brand), keys.alert_last(other_brand)]):
        assert len({key_slot(k.encode()) for k in script_keys}) == 1, script_keys
    assert keys.post(post_id) == f"as:post:{post_id}"           # the names readers use are unchanged
    assert keys.brand(brand, MINUTE) == f"as:brand:{brand}:{MINUTE}"
    if post_id != other_id:
        assert keys.seen(post_id) != keys.seen(other_id)
    if brand != other_brand:
        assert keys.counted(brand, MINUTE) != keys.counted(other_brand, MINUTE)
        assert keys.terms(brand, "negative", MINUTE) != keys.terms(other_brand, "negative", MINUTE)
        assert keys.hour_rolled(brand, MINUTE[:10]) != keys.hour_rolled(other_brand, MINUTE[:10])
        assert keys.alert_last(brand) != keys.alert_last(other_brand)


def test_companion_keys_are_named_after_their_key():
    from affectstream.streaming.worker.redis_keys import RedisKeys

    keys = RedisKeys("as:")
    assert keys.seen("p1") == "as:seen:{as:post:p1}"
    assert keys.counted("acme", MINUTE) == f"as:counted:{{as:brand:acme:{MINUTE}}}"
    assert keys.alerts_outbox == "as:alerts:outbox:{as:alerts}"
    assert keys.alert_last("acme") == "as:alert:last:{as:alerts}:acme"
    with pytest.raises(ValueError, match="braces"):
        RedisKeys("as{x}:")
