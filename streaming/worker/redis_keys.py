"""The Redis key schema (docs/contracts.md: Redis keys), in one place: key names, minute buckets and the rule
that picks a result's minute. The sink, the web views, alerts, the demo and the tests import it; nobody
builds a key or parses a bucket by hand.

Redis Cluster runs a script only on keys of one hash slot. The keys readers use keep their names
(``as:post:<id>``, ``as:brand:<brand>:<minute>``, ``as:alerts``); each key a script touches *with* one of
them is built by ``beside`` to land in that key's slot, with the key's own name as hash tag:
``as:seen:{as:post:<id>}``, ``as:counted:{as:brand:<brand>:<minute>}``, ``as:alerts:outbox:{as:alerts}``,
``as:alert:last:{as:alerts}:<brand>``. A single Redis ignores the braces.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

ALL_BRANDS = "_all"             # reserved aggregate bucket: every result counts here too
MINUTE_FORMAT = "%Y%m%d%H%M"    # UTC minute of a bucket
HOUR_CHARS = 10                 # "YYYYMMDDHH": a minute's first ten characters are its UTC hour


@dataclass(frozen=True)
class RedisKeys:
    """Every key under one prefix (``settings.redis.prefix``, default ``as:``)."""
    prefix: str = "as:"

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"redis prefix {self.prefix!r}: braces would pick the hash slot of every key")

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def beside(self, name: str, key: str, suffix: str = "") -> str:
        """``{prefix}{name}:{tag}{suffix}``, a key in ``key``'s hash slot, distinct for every ``key``."""
        tag, names_key = slot_tag(key)
        return self._key(name, "{" + tag + "}") + ("" if names_key else ":" + key) + suffix

    def post(self, post_id: str) -> str:               # string: the first Result JSON
        return self._key("post", post_id)

    def seen(self, post_id: str) -> str:               # string, in the post's slot: 'c' claimed, '1' counted
        return self.beside("seen", self.post(post_id))

    def brand(self, brand: str, minute: str) -> str:   # hash label -> count
        return self._key("brand", brand, minute)

    def counted(self, brand: str, minute: str) -> str:  # set of post ids, in the bucket's slot: counted there
        return self.beside("counted", self.brand(brand, minute))

    def brand_pattern(self) -> str:                    # SCAN match for every bucket
        return self._key("brand", "*")

    def caption(self, captioner: str, sha: str) -> str:  # string: cached description
        return self._key("caption", captioner, sha)

    @property
    def live(self) -> str:                             # pub/sub: every Result
        return self._key("live")

    @property
    def live_alerts(self) -> str:                      # pub/sub: every alert
        return self._key("live", "alerts")

    @property
    def brands(self) -> str:                           # zset brand -> newest event ms
        return self._key("brands")

    @property
    def alerts(self) -> str:                           # list of recent alerts, newest first
        return self._key("alerts")

    @property
    def alerts_outbox(self) -> str:                    # zset, in the alerts' slot: claimed, not yet acknowledged
        return self.beside("alerts:outbox", self.alerts)

    def alert_last(self, brand: str) -> str:           # string, in the alerts' slot: alerted epoch minutes
        return self.beside("alert:last", self.alerts, ":" + brand)

    # --- model versions and analysts' feedback (docs/feedback-and-versions.md) ---------------------
    # A post's keys sit in the post's slot (``beside(…, post(id))``), so one script can write them together.

    def post_input(self, post_id: str) -> str:          # string JSON {text, caption, brands, label, model}, TTL
        return self.beside("input", self.post(post_id))

    def shadow_result(self, post_id: str) -> str:       # string: the candidate's Result JSON, TTL
        return self.beside("shadow", self.post(post_id))

    def shadow_agree(self, version: str) -> str:        # hash all:<dep>:<cand> / brand:<b>:<dep>:<cand> -> count
        return self._key("shadow", "agree", version)

    def feedback(self, post_id: str) -> str:            # list of correction JSONs, oldest first
        return self.beside("feedback", self.post(post_id))

    def feedback_latest(self, post_id: str) -> str:     # hash "" (post) | brand id -> latest correction JSON
        return self.beside("feedback:latest", self.post(post_id))

    def feedback_index(self) -> str:                    # zset post id -> epoch ms of its latest correction
        return self._key("feedback", "index")

    def feedback_rate(self, analyst: str, minute: str) -> str:  # counter: corrections in one UTC minute
        return self._key("feedback", "rate", minute, analyst)

    # --- drivers: rationale terms per brand, label and minute or hour (docs/drivers.md) --------------
    # A minute's terms sit in its bucket's slot (the sink counts them in the script that counts the label);
    # an hour's keys sit in the slot of its brand-day (``day``, a name no key has), so the rollup writes an
    # hour in one script and one script sums a day's hours for a long window.

    def terms(self, brand: str, label: str, minute: str) -> str:  # hash side:term -> posts, bounded, TTL
        return self.beside("terms", self.brand(brand, minute), ":" + label)

    def day(self, brand: str, day: str) -> str:         # no key: the hash tag of a brand-day's hour keys
        return self._key("day", brand, day)

    def hour(self, brand: str, hour: str) -> str:       # hash label -> posts: the rollup of the hour's minutes
        return self.beside("hour", self.day(brand, hour[:8]), ":" + hour)

    def hour_terms(self, brand: str, label: str, hour: str) -> str:  # hash side:term -> posts, in the day's slot
        return self.beside("hterms", self.day(brand, hour[:8]), f":{hour}:{label}")

    def hour_rolled(self, brand: str, hour: str) -> str:  # string, in the day's slot: the rollup's generation
        return self.beside("rolled", self.day(brand, hour[:8]), ":" + hour)

    @property
    def rollup_due(self) -> str:                        # zset "<hour>:<brand>" -> server µs of its newest count
        return self._key("rollup", "due")

    def parse_brand_key(self, key: str) -> tuple[str, str] | None:
        """``as:brand:{brand}:{minute}`` -> (brand, minute); None for anything else."""
        head = self._key("brand", "")
        if not key.startswith(head):
            return None
        brand, _, minute = key[len(head):].rpartition(":")
        if not brand or not is_minute(minute):
            return None
        return brand, minute


# --- hash slots (Redis Cluster) ---------------------------------------------------------------------

def slot_tag(key: str) -> tuple[str, bool]:
    """A hash tag (text for ``{…}``) whose slot is ``key``'s, and whether the tag is ``key`` itself.

    Redis hashes the text between a key's first ``{`` and the next ``}`` when that is not empty, else the
    whole key. Ids and brands come from posts and may hold braces: a key with a tag of its own gives that
    tag; a key without braces is its own tag; a key with a ``}`` but no tag gets the shortest text of its
    slot (``_slot_tags``)."""
    raw = key.encode()
    start = raw.find(b"{")
    end = raw.find(b"}", start + 1) if start >= 0 else -1
    if start >= 0 and end > start + 1:
        return raw[start + 1:end].decode(), False
    if b"}" not in raw:
        return key, True
    return _slot_tags()[key_slot(raw)], False


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For every slot the shortest hex number that hashes there (about 0.2 s, once)."""
    tags: dict[int, str] = {}
    n = 0
    while len(tags) < REDIS_CLUSTER_HASH_SLOTS:
        text = format(n, "x")
        tags.setdefault(key_slot(text.encode()), text)
        n += 1
    return tuple(tags[slot] for slot in range(REDIS_CLUSTER_HASH_SLOTS))


# --- minute buckets -------------------------------------------------------------------------------

def minute_bucket(ms: int) -> str:
    """Epoch ms -> UTC minute "YYYYMMDDHHMM"."""
    return _minute_of(int(ms // 60_000))


@functools.lru_cache(maxsize=4096)  # asked for every result the sink counts; a stream's results share minutes
def _minute_of(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, tz=timezone.utc).strftime(MINUTE_FORMAT)


def parse_minute(minute: str) -> datetime:
    """"YYYYMMDDHHMM" -> aware UTC datetime; ValueError otherwise."""
    return datetime.strptime(minute, MINUTE_FORMAT).replace(tzinfo=timezone.utc)


def minute_ms(minute: str) -> int:
    """"YYYYMMDDHHMM" -> epoch ms of its start."""
    return int(parse_minute(minute).timestamp()) * 1000


def epoch_minute(minute: str) -> int:
    return minute_ms(minute) // 60_000


def is_minute(text: str) -> bool:
    if len(text) != 12 or not text.isdigit():
        return False
    try:
        parse_minute(text)
    except ValueError:
        return False
    return True


def minute_range(end: str, count: int) -> list[str]:
    """The ``count`` minutes ending at ``end`` (inclusive), oldest first."""
    last = parse_minute(end)
    return [(last - timedelta(minutes=i)).strftime(MINUTE_FORMAT) for i in range(count - 1, -1, -1)]


# --- hour buckets (the drivers' rollup) --------------------------------------------------------------

def hour_of(minute: str) -> str:
    """"YYYYMMDDHHMM" -> its UTC hour "YYYYMMDDHH"."""
    return minute[:HOUR_CHARS]


def hour_minutes(hour: str) -> list[str]:
    """The 60 minutes of an hour, oldest first."""
    return [f"{hour}{m:02d}" for m in range(60)]


def hour_range(end: str, count: int) -> list[str]:
    """The ``count`` hours ending at hour ``end`` (inclusive), oldest first."""
    last = parse_minute(end + "00")
    return [(last - timedelta(hours=i)).strftime(MINUTE_FORMAT)[:HOUR_CHARS] for i in range(count - 1, -1, -1)]


def hour_ms(hour: str) -> int:
    """"YYYYMMDDHH" -> epoch ms of its start."""
    return minute_ms(hour + "00")


def event_ms(created_at: int | None, processed_at: int) -> int:
    """The time a result is counted at: the post's ``created_at``, else when it was processed."""
    return created_at if created_at is not None else processed_at


def counted_brands(brands: Iterable[str], untargeted_brand: str = "") -> list[str]:
    """The buckets a result counts in: each of its brands (a result with none: ``untargeted_brand``, when
    set), then the all-brands aggregate. Which label each bucket counts: ``Result.bucket_labels``."""
    named = list(dict.fromkeys(brands))
    if not named and untargeted_brand:
        named = [untargeted_brand]
    return list(dict.fromkeys([*named, ALL_BRANDS]))
