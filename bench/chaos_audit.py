"""The chaos run's end-of-run checks, read from the real Redis and the real topics.

- every valid post has exactly one result: one ``post`` key per valid id and none for anything else, and
  the ``sentiment`` topic holds every valid id and no other (a redelivered result is the same id: counted
  once; how many extra records there were is reported);
- brand counts: every per-brand minute bucket equals a recount from the produced posts' brands and
  minutes and the stored results' labels (``redis_keys.counted_brands``, ``minute_bucket``; the label
  each bucket counts is ``Result.bucket_labels``: a brand's target label, ``_all`` the post label);
- driver term counts (``bench/term_audit.py``): every minute term bucket's kept terms equal a recount from
  the stored results, its ``other`` the rest, and every rolled-up hour the sum of its minutes;
- every hostile message is in the DLQ (matched by its bytes) with a reason it may end with, and no valid
  post is there.
"""
from __future__ import annotations

import base64
import collections
from dataclasses import dataclass, field

import orjson

from affectstream.bench.chaos_workload import Workload
from affectstream.bench.term_audit import TermAudit, audit_terms
from affectstream.streaming.tools.tail import topic_consumer
from affectstream.streaming.worker.dlq import MAX_RAW_BYTES
from affectstream.streaming.worker.redis_client import sync_redis
from affectstream.streaming.worker.redis_keys import counted_brands, minute_bucket
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings


@dataclass
class Audit:
    valid: int = 0
    stored: int = 0                 # valid ids with a post key
    lost: int = 0                   # valid ids with no post key
    extra_keys: int = 0             # post keys for ids that were never a valid post
    on_topic: int = 0               # distinct valid ids on the sentiment topic
    topic_missing: int = 0
    topic_extra_ids: int = 0
    topic_redelivered: int = 0      # records beyond one per id (at-least-once delivery)
    counts_over: int = 0            # bucket counts above the recount (posts counted twice)
    counts_under: int = 0           # bucket counts below the recount
    count_mismatches: list = field(default_factory=list)  # (brand, minute, label, redis, recount), a few
    image_errors: dict = field(default_factory=dict)      # image_error -> results
    cached_captions: int = 0        # caption-cache entries at the end (distinct images described)
    hostile: int = 0
    hostile_in_dlq: int = 0
    hostile_wrong_reason: list = field(default_factory=list)  # (kind, reason), a few
    hostile_missing: list = field(default_factory=list)       # kinds of the missing ones, a few
    dlq_records: int = 0
    dlq_reasons: dict = field(default_factory=dict)
    valid_in_dlq: int = 0
    first_processed_ms: int = 0
    last_processed_ms: int = 0
    terms: TermAudit = field(default_factory=TermAudit)   # driver term counts against their recount

    @property
    def ok(self) -> bool:
        return not (self.lost or self.extra_keys or self.topic_missing or self.topic_extra_ids
                    or self.counts_over or self.counts_under or self.valid_in_dlq
                    or self.hostile_in_dlq != self.hostile or self.hostile_wrong_reason or not self.terms.ok)

    def failures(self) -> list[str]:
        out = []
        for name in ("lost", "extra_keys", "topic_missing", "topic_extra_ids", "counts_over", "counts_under",
                     "valid_in_dlq"):
            if getattr(self, name):
                out.append(f"{name}={getattr(self, name)}")
        if self.hostile_in_dlq != self.hostile:
            out.append(f"hostile in DLQ {self.hostile_in_dlq}/{self.hostile} (missing kinds {self.hostile_missing})")
        if self.hostile_wrong_reason:
            out.append(f"hostile with a wrong reason: {self.hostile_wrong_reason}")
        if self.count_mismatches:
            out.append(f"count mismatches (brand, minute, label, redis, recount): {self.count_mismatches}")
        if not self.terms.ok:
            t = self.terms
            out.append(f"term counts over {t.over} under {t.under}, hours off {t.hours_off}/{t.hours}; "
                       f"(brand, minute, label, term, redis, recount): {t.mismatches}")
        return out


def stored_ids(settings: Settings, client=None) -> set[str]:
    r = client or sync_redis(settings)
    prefix = settings.keys.post("")
    return {k.decode()[len(prefix):] for k in r.scan_iter(match=prefix + "*", count=5000)}


def read_topic(settings: Settings, topic: str, idle_polls: int = 3) -> list:
    """Every record in ``topic`` (no consumer group), ending after ``idle_polls`` empty polls."""
    consumer = topic_consumer(settings, [topic], from_beginning=True, client_id="affectstream-chaos-audit")
    records, idle = [], 0
    try:
        while idle < idle_polls:
            batch = consumer.poll(timeout_ms=500, max_records=5000)
            idle = 0 if batch else idle + 1
            for part in batch.values():
                records.extend(part)
    finally:
        consumer.close()
    return records


def dlq_raws(settings: Settings) -> list[tuple[bytes, dict]]:
    """(original bytes, record) for every dead letter."""
    out = []
    for rec in read_topic(settings, settings.kafka.topic_dlq):
        value = orjson.loads(rec.value)
        out.append((base64.b64decode(value.get("raw_b64", "")), value))
    return out


def audit(settings: Settings, wl: Workload) -> Audit:
    a = Audit(valid=len(wl.valid), hostile=len(wl.hostile))
    r = sync_redis(settings)
    keys = settings.keys
    ids = set(wl.valid)
    stored = stored_ids(settings, r)
    a.stored, a.lost, a.extra_keys = len(stored & ids), len(ids - stored), len(stored - ids)

    # the stored results: labels for the recount
    labels: dict[str, dict[str, str]] = {}   # post id -> brand bucket -> label counted there
    results: list[Result] = []
    image_errors: collections.Counter = collections.Counter()
    processed = []
    ordered = sorted(stored & ids)
    for i in range(0, len(ordered), 2000):
        chunk = ordered[i:i + 2000]
        for post_id, raw in zip(chunk, r.mget([keys.post(x) for x in chunk])):
            if raw is None:
                continue
            res = orjson.loads(raw)
            results.append(Result.from_dict(res))
            labels[post_id] = results[-1].bucket_labels(settings.brands.untargeted)
            image_errors[res.get("image_error")] += 1
            processed.append(res.get("processed_at") or 0)
    a.image_errors = {str(k): v for k, v in image_errors.items()}
    if processed:
        a.first_processed_ms, a.last_processed_ms = min(processed), max(processed)

    a.cached_captions = sum(1 for _ in r.scan_iter(match=keys.caption("*", "*"), count=5000))

    # brand counts: Redis buckets vs a recount
    recount: collections.Counter = collections.Counter()
    for post_id, by_bucket in labels.items():  # buckets from the produced post; labels: Result.bucket_labels
        post = wl.valid[post_id]
        for brand in counted_brands(post.get("brands", []), settings.brands.untargeted):
            recount[(brand, minute_bucket(post["created_at"]), by_bucket.get(brand, "<not counted>"))] += 1
    in_redis: collections.Counter = collections.Counter()
    for key in r.scan_iter(match=keys.brand_pattern(), count=5000):
        parsed = keys.parse_brand_key(key.decode())
        if parsed is None:
            continue
        for label, n in r.hgetall(key).items():
            in_redis[(*parsed, label.decode())] += int(n)
    for k in set(recount) | set(in_redis):
        diff = in_redis[k] - recount[k]
        if diff:
            a.counts_over += max(diff, 0)
            a.counts_under += max(-diff, 0)
            if len(a.count_mismatches) < 5:
                a.count_mismatches.append((*k, in_redis[k], recount[k]))

    a.terms = audit_terms(settings, results, r)

    # the sentiment topic
    results = read_topic(settings, settings.kafka.topic_sentiment)
    topic_ids = collections.Counter(orjson.loads(rec.value)["id"] for rec in results)
    a.on_topic = len(set(topic_ids) & ids)
    a.topic_missing = len(ids - set(topic_ids))
    a.topic_extra_ids = len(set(topic_ids) - ids)
    a.topic_redelivered = len(results) - len(topic_ids)

    # the DLQ
    dead = dlq_raws(settings)
    a.dlq_records = len(dead)
    a.dlq_reasons = dict(collections.Counter(v["reason"] for _, v in dead))
    reasons_by_raw: dict[bytes, set[str]] = collections.defaultdict(set)
    for raw, value in dead:
        reasons_by_raw[raw].add(value["reason"])
        if value.get("post_id") in ids:
            a.valid_in_dlq += 1
    for h in wl.hostile:
        got = reasons_by_raw.get(h.raw[:MAX_RAW_BYTES])
        if not got:
            if len(a.hostile_missing) < 5:
                a.hostile_missing.append(h.kind)
            continue
        a.hostile_in_dlq += 1
        if not got <= h.reasons and len(a.hostile_wrong_reason) < 5:
            a.hostile_wrong_reason.append((h.kind, sorted(got)))
    return a
