"""The Redis key schema (DESIGN.md: Redis keys), in one place: key names, minute buckets and the rule
that picks a result's minute. The sink, the web views, alerts, the demo and the tests import it; nobody
builds a key or parses a bucket by hand."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable

ALL_BRANDS = "_all"             # reserved aggregate bucket: every result counts here too
MINUTE_FORMAT = "%Y%m%d%H%M"    # UTC minute of a bucket


@dataclass(frozen=True)
class RedisKeys:
    """Every key under one prefix (``settings.redis_prefix``, default ``as:``)."""
    prefix: str = "as:"

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def post(self, post_id: str) -> str:               # string: latest Result JSON
        return self._key("post", post_id)

    def seen(self, post_id: str) -> str:               # string: counted-once marker
        return self._key("seen", post_id)

    def brand(self, brand: str, minute: str) -> str:   # hash label -> count
        return self._key("brand", brand, minute)

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
    def alerts_outbox(self) -> str:                    # zset: claimed alerts not yet acknowledged by the broker
        return self._key("alerts", "outbox")

    def alert_last(self, brand: str) -> str:           # string: the brand's alerted epoch minutes, comma-separated
        return self._key("alert", "last", brand)

    def parse_brand_key(self, key: str) -> tuple[str, str] | None:
        """``as:brand:{brand}:{minute}`` -> (brand, minute); None for anything else."""
        head = self._key("brand", "")
        if not key.startswith(head):
            return None
        brand, _, minute = key[len(head):].rpartition(":")
        if not brand or not is_minute(minute):
            return None
        return brand, minute


# --- minute buckets -------------------------------------------------------------------------------

def minute_bucket(ms: int) -> str:
    """Epoch ms -> UTC minute "YYYYMMDDHHMM"."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime(MINUTE_FORMAT)


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


def event_ms(created_at: int | None, processed_at: int) -> int:
    """The time a result is counted at: the post's ``created_at``, else when it was processed."""
    return created_at if created_at is not None else processed_at


def counted_brands(brands: Iterable[str]) -> list[str]:
    """The buckets a result counts in: each of its brands, then the all-brands aggregate."""
    return list(dict.fromkeys([*brands, ALL_BRANDS]))
