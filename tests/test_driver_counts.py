"""Driver term counts in a real Redis: exact and idempotent per (post, bucket) like the label counts,
bounded, marked for the hour rollup after counting; the rollup exact and idempotent; the drivers read back
for a window and put in an alert."""
from __future__ import annotations

import asyncio
import collections

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from affectstream.streaming.monitor.alerts import AlertRule, detect_shift, make_alert
from affectstream.streaming.monitor.drivers import DriverReader
from affectstream.streaming.monitor.rollup import Rollup
from affectstream.streaming.worker.redis_keys import minute_bucket
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.sinks import SinkItem
from affectstream.streaming.worker.sinks.redis import RedisSink
from tests.servers import settings_for

pytestmark = pytest.mark.integration

M0 = 1764410400000          # 2025-11-29 10:00 UTC
HOUR = "2025112910"
NOW = M0 + 3 * 3_600_000    # the hour ended long enough ago to be rolled up


def post(i: int, minute: int, label: str, words: tuple[str, ...], brand: str = "acme",
         post_words: tuple[str, ...] = ("meh",)) -> SinkItem:
    """A post about ``brand`` with target ``label`` and those rationale ``words`` (text side)."""
    rationale = [{"text": w, "score": 0.9, "source": "text"} for w in words]
    target = {"brand": brand, "label": label, "scores": {label: 1.0}, "rationale": rationale,
              "mentions": [{"brand": brand, "name": brand.title(), "alias": brand, "source": "text"}]}
    return SinkItem.of(Result(id=f"p{i}", label="neutral", scores={"neutral": 1.0}, brands=[brand],
                              targets=[target], rationale=[{"text": w, "score": 0.5, "source": "text"}
                                                           for w in post_words],
                              model="v1", created_at=M0 + minute * 60_000 + i, processed_at=NOW))


async def term_counts(client, s, brand: str, label: str, minute: int) -> dict[str, int]:
    raw = await client.hgetall(s.keys.terms(brand, label, minute_bucket(M0 + minute * 60_000)))
    return {k.decode(): int(v) for k, v in raw.items()}


def test_term_counts_are_exact_and_a_redelivered_post_adds_nothing(redis_server):
    s = settings_for(redis=redis_server)
    batch = [post(1, 0, "negative", ("refund", "Refund!", "acme", "the")),
             post(2, 0, "negative", ("refund", "outage")),
             post(3, 0, "positive", ("love",)),
             post(4, 0, "neutral", ("fine",))]

    async def run():
        sink = RedisSink(s)
        fresh = [await sink.write(batch) for _ in range(3)]
        counts = {label: await term_counts(sink.client, s, "acme", label, 0)
                  for label in ("negative", "positive", "neutral")}
        everyone = await term_counts(sink.client, s, "_all", "neutral", 0)
        due = await sink.client.zrange(s.keys.rollup_due, 0, -1)
        await sink.close()
        return fresh, counts, everyone, due

    fresh, counts, everyone, due = asyncio.run(run())
    assert fresh == [{"p1", "p2", "p3", "p4"}, set(), set()]
    assert counts == {"negative": {"text:refund": 2, "text:outage": 1}, "positive": {"text:love": 1},
                      "neutral": {"text:fine": 1}}, "the brand and stopwords never count"
    assert everyone == {}, "_all counts labels only: the drivers are per brand"
    assert sorted(due) == [f"{HOUR}:_all".encode(), f"{HOUR}:acme".encode()]


def test_a_full_term_bucket_counts_new_terms_as_other_and_its_kept_terms_stay_exact(redis_server):
    s = settings_for(redis=redis_server, driver_terms_per_bucket=2)
    batch = [post(1, 0, "negative", ("refund", "outage")), post(2, 0, "negative", ("late", "refund")),
             post(3, 0, "negative", ("outage", "broken", "late"))]

    async def run():
        sink = RedisSink(s)
        for item in batch + batch:
            await sink.write([item])
        counts = await term_counts(sink.client, s, "acme", "negative", 0)
        await sink.close()
        return counts

    assert asyncio.run(run()) == {"text:refund": 2, "text:outage": 2, "other": 3}


WORDS = ("refund", "outage", "late", "broken", "love", "fast", "slow", "great")
STREAM = st.lists(st.lists(st.tuples(st.integers(0, 9), st.sampled_from(("negative", "neutral", "positive")),
                                     st.lists(st.sampled_from(WORDS), max_size=4)),
                           min_size=1, max_size=8), min_size=1, max_size=6)


def recount(batches: list, cap: int) -> dict[tuple[int, str], dict[str, int]]:
    """Post by post, in stream order: a post's first result counts once per minute; a term joins its hash
    while the hash holds fewer than ``cap`` terms, later new ones count as ``other``."""
    first: dict[int, tuple] = {}
    hashes: dict[tuple[int, str], dict[str, int]] = collections.defaultdict(dict)
    for batch in batches:
        for i, label, words in batch:
            if i in first:
                continue
            first[i] = (label, words)
            counts = hashes[(i % 2, label)]   # a post's minute is i % 2
            for term in dict.fromkeys(f"text:{w}" for w in words):
                if term in counts or sum(1 for t in counts if t != "other") < cap and "other" not in counts:
                    counts[term] = counts.get(term, 0) + 1
                else:
                    counts["other"] = counts.get("other", 0) + 1
    return {k: v for k, v in hashes.items() if v}


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=STREAM, cap=st.integers(1, 4))
def test_term_counts_equal_a_post_by_post_recount_whatever_the_batches_and_redeliveries(redis_server, batches, cap):
    """A redelivered post (here with another label and other words: a newer model) still counts its first
    result, once; the script's sums per call keep the same terms a post-by-post count keeps."""
    s = settings_for(redis=redis_server, driver_terms_per_bucket=cap)

    async def run():
        sink = RedisSink(s)
        for batch in batches:
            await sink.write([post(i, i % 2, label, tuple(words), post_words=()) for i, label, words in batch])
        stored = {(minute, label): await term_counts(sink.client, s, "acme", label, minute)
                  for minute in (0, 1) for label in ("negative", "neutral", "positive")}
        await sink.close()
        return {k: v for k, v in stored.items() if v}

    assert asyncio.run(run()) == recount(batches, cap)


def test_a_write_that_died_after_counting_is_marked_for_the_rollup_by_its_redelivery(redis_server):
    from affectstream.streaming.worker.sinks.redis import _Write

    s = settings_for(redis=redis_server)
    item = post(1, 0, "negative", ("refund",))

    async def run():
        dead = RedisSink(s)
        w = [_Write(item)]
        await dead._claim_step(w, set())
        await dead._count_step(w, set())          # killed here: counted, not marked, not announced
        before = await dead.client.zcard(s.keys.rollup_due)
        await dead.close()
        sink = RedisSink(s)
        fresh = await sink.write([item])
        after = await sink.client.zcard(s.keys.rollup_due)
        counts = await term_counts(sink.client, s, "acme", "negative", 0)
        await sink.close()
        return before, fresh, after, counts

    assert asyncio.run(run()) == (0, {"p1"}, 2, {"text:refund": 1})


def test_a_sink_marks_an_open_hour_once_and_a_closed_hour_at_every_count(redis_server):
    """An hour still open (by the wall clock) keeps its mark until the rollup may take it, so the sink marks
    it once; an hour that ended marks again with every count (a late post must reach its rollup)."""
    import time

    s = settings_for(redis=redis_server)
    now = int(time.time() * 1000)

    def live(i: int, at_ms: int) -> SinkItem:
        item = post(i, 0, "negative", ("refund",))
        return SinkItem.of(Result.from_dict({**item.result.to_dict(), "created_at": at_ms}))

    async def run():
        sink = RedisSink(s)
        due = s.keys.rollup_due
        await sink.write([live(1, now)])
        first = await sink.client.zrange(due, 0, -1, withscores=True)
        await sink.write([live(2, now)])
        open_again = await sink.client.zrange(due, 0, -1, withscores=True)
        await sink.write([live(3, M0)])
        closed = await sink.client.zscore(due, f"{HOUR}:acme")
        await sink.write([live(4, M0)])
        closed_again = await sink.client.zscore(due, f"{HOUR}:acme")
        await sink.close()
        return first, open_again, closed, closed_again

    first, open_again, closed, closed_again = asyncio.run(run())
    assert len(first) == 2 and open_again == first, "the open hour's marks were not written again"
    assert closed_again > closed, "a closed hour is marked again by every count"


def test_the_rollup_sums_an_hours_minutes_exactly_once_and_again_after_a_late_post(redis_server):
    s = settings_for(redis=redis_server, driver_terms_per_hour=2, driver_labels="negative,positive")
    batch = [post(i, i % 60, "negative", ("refund", "outage") if i % 2 else ("refund", "slow")) for i in range(9)]

    async def hour(client, label):
        return ({k.decode(): int(v) for k, v in (await client.hgetall(s.keys.hour("acme", HOUR))).items()},
                {k.decode(): int(v) for k, v in (await client.hgetall(s.keys.hour_terms("acme", label, HOUR))).items()})

    async def run():
        sink = RedisSink(s)
        rollup = Rollup(sink.client, s)
        await sink.write(batch)
        too_early = await rollup.run_due(M0 + 30 * 60_000)
        written = [await rollup.run_due(NOW), await rollup.run_due(NOW)]
        first = await hour(sink.client, "negative")
        await sink.write([post(20, 59, "negative", ("slow",)), post(21, 59, "positive", ("love",))])  # late
        written.append(await rollup.run_due(NOW))
        second = await hour(sink.client, "negative"), await hour(sink.client, "positive")
        stale = await rollup.write_hour("acme", HOUR, await rollup.hour_from_minutes("acme", HOUR), 1)
        await sink.close()
        return too_early, written, first, second, stale

    too_early, written, first, second, stale = asyncio.run(run())
    assert too_early == 0 and written == [2, 0, 2], "acme and _all; nothing due twice; again after the late post"
    assert first == ({"negative": 9}, {"text:refund": 9, "text:slow": 5, "other": 4})
    assert second[0] == ({"negative": 10, "positive": 1}, {"text:refund": 9, "text:slow": 6, "other": 4})
    assert second[1][1] == {"text:love": 1}
    assert stale is False, "an older generation never replaces a newer rollup"


def burst() -> list[SinkItem]:
    """40 calm minutes for acme (2 negative of 10, about the app and delivery), then a minute of refunds."""
    calm = [post(m * 10 + i, m, "negative" if i < 2 else "positive",
                 ("app", "slow") if i == 0 else ("delivery", "late") if i == 1 else ("love", "coffee"))
            for m in range(40) for i in range(10)]
    refunds = [post(1000 + i, 40, "negative", ("refund", "waiting", "money") if i % 2 else ("refund", "app"))
               for i in range(20)]
    return calm + refunds + [post(1100 + i, 40, "positive", ("love",)) for i in range(5)]


def test_the_drivers_of_a_refund_burst_name_refund_with_examples_and_the_alert_carries_them(redis_server):
    s = settings_for(redis=redis_server)
    minute = minute_bucket(M0 + 40 * 60_000)

    async def run():
        sink = RedisSink(s)
        items = burst()
        for i in range(0, len(items), 64):
            await sink.write(items[i:i + 64])
        reader = DriverReader(sink.client, s)
        payload = await reader.drivers("acme", 20, minute)     # minutes 21-40 against 1-20
        rule = AlertRule(baseline_minutes=30)
        shift = detect_shift([{"negative": 20, "positive": 5}], [{"negative": 2, "positive": 8}] * 30, rule)
        alert = await reader.explain(make_alert("acme", minute, shift, rule, 0), rule)
        hour_payload = await reader.drivers("acme", 24 * 60, minute)
        await sink.close()
        return payload, alert, hour_payload

    payload, alert, hour_payload = asyncio.run(run())
    negative = payload["labels"]["negative"]
    assert (negative["posts"], negative["baseline_posts"]) == (58, 40)
    assert [d["term"] for d in negative["drivers"]][:1] == ["refund"]
    assert {d["term"] for d in negative["drivers"]} <= {"refund", "waiting", "money"}
    assert len(negative["drivers"][0]["examples"]) == 3
    assert all(e["label"] == "negative" for e in negative["drivers"][0]["examples"])
    assert alert["id"] == f"acme:{minute}" and alert["drivers"][0]["term"] == "refund"
    assert alert["drivers"][0]["z"] >= 1.645 and len(alert["drivers"][0]["examples"]) == 3
    assert alert["summary"].startswith("acme: negative 80 % of 25 posts (+60 pts vs the previous 30 min, z = ")
    assert "— refund" in alert["summary"]
    assert hour_payload["unit"] == "hour" and hour_payload["posts"] == 425, "the unrolled hour read from minutes"


def test_without_driver_labels_the_sink_counts_labels_only(redis_server):
    s = settings_for(redis=redis_server, driver_labels="")

    async def run():
        sink = RedisSink(s)
        await sink.write([post(1, 0, "negative", ("refund",))])
        keys = await sink.client.keys(s.redis.prefix + "*")
        await sink.close()
        return collections.Counter(k.decode().split(":")[1] for k in keys)

    kinds = asyncio.run(run())
    assert "terms" not in kinds and "rollup" not in kinds and kinds["brand"] == 2


def test_terms_rollup_and_long_windows_work_on_a_redis_cluster(redis_cluster):
    """Every drivers script's keys share a slot (else CROSSSLOT): counting, marking, the rollup, the day sums
    and the examples, with a brand whose braces pick its slot, on a 3-master cluster."""
    s = settings_for(redis_url=redis_cluster.url, redis_cluster=True)
    items = [post(i, i % 60, "negative", ("refund", "late"), brand="we{ird}") for i in range(12)]

    async def run():
        sink = RedisSink(s)
        await sink.write(items)
        await sink.write(items)
        written = await Rollup(sink.client, s).run_due(NOW)
        reader = DriverReader(sink.client, s)
        day = await reader.drivers("we{ird}", 24 * 60, minute_bucket(M0 + 59 * 60_000))
        counts = await term_counts(sink.client, s, "we{ird}", "negative", 0)
        await sink.close()
        return written, day, counts

    written, day, counts = asyncio.run(run())
    assert written == 2 and counts == {"text:refund": 1, "text:late": 1}
    assert day["unit"] == "hour" and day["labels"]["negative"]["posts"] == 12
