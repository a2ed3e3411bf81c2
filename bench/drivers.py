"""What the drivers cost (docs/drivers.md), on a real redis-server of the bench's own:

* **sink**: the Redis sink's time per result with driver terms counted against the same sink without
  (``driver_labels=''``: the sink as it was before drivers), alternating batch by batch on fresh keys, in
  ``sink_rounds`` rounds (goal: at most 20 % more), for two streams: 20 busy brands (a few hundred posts a
  brand-minute, so the term hashes fill up to ``driver_terms_per_bucket``) and 1,000 quieter ones (a few
  posts a brand-minute, most term hashes new);
* **memory per brand-day**: one brand's day of posts through the sink at ``posts_per_minute``, its hours
  rolled up; ``MEMORY USAGE`` of every key, by kind (minute terms, label buckets, hour buckets);
* **1,000 brands × 7 days**: that day's hour buckets copied to ``brands`` brands over ``2 × days`` days (a
  7-day window and the 7 days before it, its baseline), then ``/api/drivers``'s work (``DriverReader``,
  in process) timed per brand for 1 h, 24 h and 7 d, and a page of 50 brands at the dashboard's 4 at once.

Results are synthetic: a post is about one or two of the brands, each target with ``words`` rationale words
(4; the default model shows 2.3-2.7 since it selects content words only, so the sink is also timed at
``short_words``) from a Zipf-shaped vocabulary of 2,000 (its label's words a little more often), as many on
the post.
"""
from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from dataclasses import dataclass

from affectstream.streaming.monitor.drivers import DriverReader
from affectstream.streaming.monitor.rollup import Rollup
from affectstream.streaming.tools.services import start_redis
from affectstream.streaming.worker.redis_client import async_redis
from affectstream.streaming.worker.redis_keys import hour_range, minute_bucket
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.sinks import SinkItem
from affectstream.streaming.worker.sinks.redis import RedisSink

SINK_COST_GOAL = 0.20
WARM_UP_BATCHES = 5           # connections, script loads (then one batch per 32 brands: module docstring)
T0 = 1764547200000            # 2025-12-01 00:00 UTC
LABELS = ("negative", "neutral", "positive")
VOCAB = [f"w{i:04d}" for i in range(2000)]
WEIGHTS = [1 / (i + 1) for i in range(len(VOCAB))]


@dataclass(frozen=True)
class DriverBench:
    sink_batches: int = 200           # timed batches of each variant
    sink_brands: tuple[int, ...] = (20, 1000)   # a few busy brands (full term hashes), many quiet ones
    sink_rounds: int = 3
    batch: int = 32
    posts_per_minute: int = 2         # one brand's traffic for the brand-day
    brands: int = 1000
    days: int = 7
    page_brands: int = 50
    words: int = 4                    # rationale words per target and per post
    short_words: int = 3              # the sink timed again at about the default model's rationale length


def result(rng: random.Random, i: int, brands: list[str], at_ms: int, n_words: int = 4) -> SinkItem:
    """A synthetic result (module docstring)."""
    def words(label: str) -> list[dict]:
        shift = LABELS.index(label) * 40   # each label favours other words a little
        picks = rng.choices(VOCAB[shift:] + VOCAB[:shift], WEIGHTS, k=n_words)
        return [{"text": w, "score": 0.5, "source": "text" if j % 3 else "image"} for j, w in enumerate(picks)]

    labels = {b: rng.choice(LABELS) for b in brands}
    targets = [{"brand": b, "label": lb, "scores": {lb: 1.0}, "rationale": words(lb), "mentions": []}
               for b, lb in labels.items()]
    label = rng.choice(LABELS)
    return SinkItem.of(Result(id=f"b{i}", label=label, scores={label: 1.0}, rationale=words(label),
                              brands=list(labels), targets=targets, model="bench", created_at=at_ms,
                              processed_at=at_ms))


async def sink_cost(url: str, cfg: DriverBench, words: int | None = None, brands: int | None = None) -> dict:
    """Median ms per batch with and without driver terms, alternating batch by batch; fresh ids and prefixes
    each call. A warm-up first brings every brand's open hour in (a running stream has marked it for the
    rollup: docs/drivers.md), so the timed batches are the steady state."""
    rng = random.Random(7)
    times: dict[str, list[float]] = {"off": [], "on": []}
    run = uuid.uuid4().hex[:6]   # fresh keys: posts new to the sink, as in a live stream
    sinks = {name: RedisSink(Settings.load({"redis_url": url, "redis_prefix": f"bs{run}{name}:",
                                            "driver_labels": "" if name == "off" else LABELS_SETTING}))
             for name in times}
    names = [f"brand{i}" for i in range(brands or cfg.sink_brands[0])]
    now = int(time.time() * 1000)   # a live stream's hours are open: the sink marks each once
    n_words = words or cfg.words
    warm_up = WARM_UP_BATCHES + -(-len(names) // cfg.batch)
    try:
        for n in range(warm_up + cfg.sink_batches):
            for name, sink in (sorted(sinks.items()) if n % 2 else sorted(sinks.items(), reverse=True)):
                firsts = names[n * cfg.batch:(n + 1) * cfg.batch]   # every brand once, during the warm-up
                batch = [result(rng, n * cfg.batch + i, [firsts[i]] if i < len(firsts) else
                                rng.sample(names, 1 + (i % 5 == 0)), now + n, n_words) for i in range(cfg.batch)]
                started = time.perf_counter()
                await sink.write(batch)
                if n >= warm_up:
                    times[name].append((time.perf_counter() - started) * 1000)
        term_keys = {name: len([k async for k in sink.client.scan_iter(match=f"bs{run}{name}:*terms*", count=1000)])
                     for name, sink in sinks.items()}
        if term_keys["off"] or not term_keys["on"]:   # the two variants must be what the row says they are
            raise RuntimeError(f"sink bench: term hashes written off / on: {term_keys}")
    finally:
        for sink in sinks.values():
            await sink.close()
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {"off_ms_per_batch": off, "on_ms_per_batch": on, "added": on / off - 1, "batch": cfg.batch,
            "words": n_words, "brands": len(names), "goal": SINK_COST_GOAL}


async def sink_rounds(url: str, cfg: DriverBench, words: int, brands: int) -> dict:
    """``sink_cost`` ``cfg.sink_rounds`` times (this host's speed drifts from minute to minute): the median
    round's figures, and the lowest and highest added share."""
    rounds = [await sink_cost(url, cfg, words, brands) for _ in range(cfg.sink_rounds)]
    middle = sorted(rounds, key=lambda r: r["added"])[len(rounds) // 2]
    return {**middle, "rounds": len(rounds), "added_range": (min(r["added"] for r in rounds),
                                                            max(r["added"] for r in rounds))}


LABELS_SETTING = ",".join(LABELS)


async def memory_by_kind(client, prefix: str) -> dict[str, int]:
    """Bytes (MEMORY USAGE) of every key under ``prefix``, by the first part of its name."""
    out: dict[str, int] = {}
    async for key in client.scan_iter(match=prefix + "*", count=5000):
        kind = key.decode()[len(prefix):].split(":")[0]
        out[kind] = out.get(kind, 0) + (await client.memory_usage(key, samples=0) or 0)
    return out


async def brand_day(url: str, cfg: DriverBench) -> tuple[dict, Settings]:
    """One brand's day through the sink and the rollup; bytes by kind."""
    s = Settings.load({"redis_url": url, "redis_prefix": "bd:", "driver_labels": LABELS_SETTING})
    rng = random.Random(11)
    items = [result(rng, i, ["acme"], T0 + i * 60_000 // cfg.posts_per_minute)
             for i in range(24 * 60 * cfg.posts_per_minute)]
    sink = RedisSink(s)
    try:
        for i in range(0, len(items), cfg.batch):
            await sink.write(items[i:i + cfg.batch])
        await Rollup(sink.client, s).run_due(T0 + 26 * 3_600_000)
        kinds = await memory_by_kind(sink.client, s.redis.prefix)
    finally:
        await sink.close()
    return kinds, s


async def fill_brands(url: str, day: Settings, cfg: DriverBench) -> tuple[Settings, int]:
    """Copy the brand-day's 24 hour buckets to every brand over 2 × days days; returns the settings and
    the bytes Redis grew by."""
    s = Settings.load({"redis_url": url, "redis_prefix": "fb:", "driver_labels": LABELS_SETTING})
    client = async_redis(s)
    try:
        src = day.keys
        hours = hour_range(minute_bucket(T0 + 23 * 3_600_000)[:10], 24)
        template = []
        for hour in hours:
            counts = await client.hgetall(src.hour("acme", hour))
            terms = {lb: await client.hgetall(src.hour_terms("acme", lb, hour)) for lb in LABELS}
            template.append((counts, terms))
        before = (await client.info("memory"))["used_memory"]
        end = minute_bucket(T0 + (2 * cfg.days - 1) * 86_400_000 + 23 * 3_600_000)[:10]
        all_hours = hour_range(end, 2 * cfg.days * 24)
        for b in range(cfg.brands):
            brand = f"brand{b:04d}"
            async with client.pipeline(transaction=False) as pipe:
                for j, hour in enumerate(all_hours):
                    counts, terms = template[j % 24]
                    pipe.hset(s.keys.hour(brand, hour), mapping=counts)
                    for lb in LABELS:
                        pipe.hset(s.keys.hour_terms(brand, lb, hour), mapping=terms[lb])
                    pipe.set(s.keys.hour_rolled(brand, hour), 1)
                await pipe.execute()
        grown = (await client.info("memory"))["used_memory"] - before
    finally:
        await client.aclose()
    return s, grown


async def query_latency(s: Settings, cfg: DriverBench) -> dict:
    """ms per ``/api/drivers`` (its work, in process) for a few brands, per window; a page of 50 brands."""
    client = async_redis(s)
    try:
        reader = DriverReader(client, s)
        end = minute_bucket(T0 + (2 * cfg.days - 1) * 86_400_000 + 23 * 3_600_000 + 59 * 60_000)
        out = {}
        for minutes in (60, 24 * 60, cfg.days * 24 * 60):
            times = []
            for b in range(0, cfg.brands, max(1, cfg.brands // 20)):
                started = time.perf_counter()
                await reader.drivers(f"brand{b:04d}", minutes, end)
                times.append((time.perf_counter() - started) * 1000)
            out[minutes] = {"p50_ms": statistics.median(times), "max_ms": max(times)}
        started = time.perf_counter()
        names = [f"brand{b:04d}" for b in range(cfg.page_brands)]
        for i in range(0, len(names), 4):
            await asyncio.gather(*(reader.drivers(n, cfg.days * 24 * 60, end) for n in names[i:i + 4]))
        out["page_7d_s"] = time.perf_counter() - started
        return out
    finally:
        await client.aclose()


def bench_drivers(cfg: DriverBench = DriverBench()) -> dict:
    """Every figure of the module docstring, on a redis-server started for it."""
    redis = start_redis()
    try:
        async def run() -> dict:
            sinks = [await sink_rounds(redis.url, cfg, words, brands)
                     for brands in cfg.sink_brands for words in (cfg.words, cfg.short_words)]
            kinds, day = await brand_day(redis.url, cfg)
            filled, grown = await fill_brands(redis.url, day, cfg)
            latency = await query_latency(filled, cfg)
            return {"sinks": sinks, "brand_day_bytes": kinds, "fill_bytes": grown, "latency": latency,
                    "config": cfg.__dict__}
        return asyncio.run(run())
    finally:
        redis.stop()


def rows(r: dict) -> list[str]:
    """The bench's lines for RESULTS.md."""
    cfg, kinds, lat = r["config"], r["brand_day_bytes"], r["latency"]
    minute_terms = kinds.get("terms", 0)
    hours = sum(kinds.get(k, 0) for k in ("hour", "hterms", "rolled"))
    brand_days = cfg["brands"] * 2 * cfg["days"]
    return [*(
        f"| drivers: Redis sink time per batch of {s['batch']} over {s['brands']:,} brands, {s['words']} rationale "
        f"words, terms off / on | {s['off_ms_per_batch']:.2f} / {s['on_ms_per_batch']:.2f} ms "
        f"(+{100 * s['added']:.1f} %; {s['rounds']} rounds +{100 * s['added_range'][0]:.1f} to "
        f"+{100 * s['added_range'][1]:.1f} %) | ≤ +{100 * s['goal']:.0f} %: "
        f"{'met' if s['added'] <= s['goal'] else '**not met**'} |"
        for s in r["sinks"]),
        f"| drivers: Redis memory per brand-day at {cfg['posts_per_minute']} posts/min | minute terms "
        f"{minute_terms / 1e6:.2f} MB (kept for bucket_ttl_s, 2 d), hour buckets {hours / 1e3:.0f} kB "
        f"(label counts and counted sets: {(kinds.get('brand', 0) + kinds.get('counted', 0)) / 1e6:.2f} MB) | — |",
        f"| drivers: {cfg['brands']:,} brands × {2 * cfg['days']} days of hour buckets | {r['fill_bytes'] / 1e9:.2f} GB "
        f"({r['fill_bytes'] / brand_days / 1e3:.0f} kB per brand-day) | — |",
        f"| drivers: /api/drivers p50 (max) for 1 h / 24 h / 7 d | " + " / ".join(
            f"{lat[m]['p50_ms']:.0f} ({lat[m]['max_ms']:.0f}) ms" for m in (60, 1440, cfg['days'] * 1440))
        + f"; a page of {cfg['page_brands']} brands over 7 d {lat['page_7d_s']:.1f} s | — |",
    ]


if __name__ == "__main__":
    import json
    import sys

    quick = "--quick" in sys.argv
    found = bench_drivers(DriverBench(sink_batches=40, brands=100) if quick else DriverBench())
    print(json.dumps(found, indent=1, default=str))
    print("\n".join(rows(found)))
