"""Sentiment-shift alerts: a sudden rise of a brand's negative share against its own recent baseline.

The rule (``AlertRule`` defaults), evaluated per brand for a minute ``m`` of event time (``created_at``):

* window   = the ``window_minutes`` minute buckets ending at ``m``: n₁ posts, x₁ of them negative;
* baseline = the ``baseline_minutes`` buckets just before the window: n₀ posts, x₀ negative;
* one-sided two-proportion z-test with the pooled share p = (x₁ + x₀) / (n₁ + n₀)::

      z = (x₁/n₁ − x₀/n₀) / sqrt(p (1 − p) (1/n₁ + 1/n₀))

* fire when z ≥ ``z_threshold`` (3.0, one-sided p ≈ 0.0013), n₁ ≥ ``min_window_posts`` (20),
  n₀ ≥ ``min_baseline_posts`` (20) and the share rose by at least ``min_rise`` (0.10 absolute: at high
  volume a tiny rise is "significant" but not worth waking anyone);
* cooldown: a brand that fired at minute m does not fire again for any minute within
  ``cooldown_minutes`` (30) of m, before or after it, so one burst gives one alert even while it lasts
  several minutes, and a backfilled older minute is judged against every alert the brand had.

``detect_shift`` is a pure function of minute buckets (label -> count dicts), testable without servers.
``AlertOutbox.claim`` applies the cooldown atomically in Redis (one Lua script: the brand's alerted minutes are
compared with the new one in both directions, then the alert is recorded, published and queued), so any
number of workers may evaluate the same brand and exactly one of them fires. State lives in Redis, not in a
faust Table. The claim's keys (the brand's alerted minutes, the alerts list, the outbox) share one hash slot
(``redis_keys``: ``as:alert:last:{as:alerts}:<brand>``, ``as:alerts``, ``as:alerts:outbox:{as:alerts}``), so
the script runs on Redis Cluster too.

Delivery to the ``sentiment-alerts`` topic is at least once: the claim also puts the alert in an outbox (a
Redis sorted set); it leaves the outbox only when the broker acknowledged the send, and a failed send (or a
worker that died before its send was acknowledged) is retried at a later tick. So a consumer may see an
alert twice, never not at all; the message key is the alert id ``brand:minute`` (also ``id`` in the value)
for consumers to drop repeats.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import orjson

from affectstream.streaming.worker.redis_keys import RedisKeys, epoch_minute, minute_range

ALERTS_KEEP = 200  # newest alerts kept in the Redis list for the dashboard


@dataclass(frozen=True)
class AlertRule:
    label: str = "negative"
    window_minutes: int = 1
    baseline_minutes: int = 30
    z_threshold: float = 3.0
    min_window_posts: int = 20
    min_baseline_posts: int = 20
    min_rise: float = 0.10
    cooldown_minutes: int = 30

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Shift:
    """The test statistic for one brand and window, and whether the rule fires."""
    n: int                    # posts in the window
    hits: int                 # of them with rule.label
    baseline_n: int
    baseline_hits: int
    share: float
    baseline_share: float
    z: float
    fired: bool
    why: str                  # "fired" or the first condition that failed


def _count(buckets: Sequence[Mapping[str, int]], label: str) -> tuple[int, int]:
    total = sum(sum(b.values()) for b in buckets)
    hits = sum(b.get(label, 0) for b in buckets)
    return total, hits


def two_proportion_z(x1: int, n1: int, x0: int, n0: int) -> float:
    """One-sided z of share x1/n1 above x0/n0 with the pooled variance; 0 when undefined."""
    if n1 <= 0 or n0 <= 0:
        return 0.0
    p = (x1 + x0) / (n1 + n0)
    var = p * (1 - p) * (1 / n1 + 1 / n0)
    if var <= 0:
        return 0.0
    return (x1 / n1 - x0 / n0) / math.sqrt(var)


def detect_shift(window: Sequence[Mapping[str, int]], baseline: Sequence[Mapping[str, int]],
                 rule: AlertRule = AlertRule()) -> Shift:
    """Apply ``rule`` to the window's and the baseline's minute buckets (each a label -> count dict)."""
    n, hits = _count(window, rule.label)
    n0, hits0 = _count(baseline, rule.label)
    share = hits / n if n else 0.0
    share0 = hits0 / n0 if n0 else 0.0
    z = two_proportion_z(hits, n, hits0, n0)
    if n < rule.min_window_posts:
        why = f"window volume {n} < {rule.min_window_posts}"
    elif n0 < rule.min_baseline_posts:
        why = f"baseline volume {n0} < {rule.min_baseline_posts}"
    elif share - share0 < rule.min_rise:
        why = f"rise {share - share0:.3f} < {rule.min_rise}"
    elif z < rule.z_threshold:
        why = f"z {z:.2f} < {rule.z_threshold}"
    else:
        why = "fired"
    return Shift(n=n, hits=hits, baseline_n=n0, baseline_hits=hits0, share=share, baseline_share=share0,
                 z=z, fired=why == "fired", why=why)


# --- minutes ----------------------------------------------------------------------------------------

def windows_for(minute: str, rule: AlertRule) -> tuple[list[str], list[str]]:
    """(window minutes, baseline minutes) for evaluating ``minute``, oldest first."""
    span = minute_range(minute, rule.window_minutes + rule.baseline_minutes)
    return span[rule.baseline_minutes:], span[:rule.baseline_minutes]


def make_alert(brand: str, minute: str, shift: Shift, rule: AlertRule, at_ms: int) -> dict:
    """The alert message (``sentiment-alerts`` topic, Redis list, dashboard)."""
    return {
        "id": f"{brand}:{minute}",
        "brand": brand,
        "minute": minute,
        "label": rule.label,
        "share": round(shift.share, 4),
        "baseline_share": round(shift.baseline_share, 4),
        "n": shift.n,
        "hits": shift.hits,
        "baseline_n": shift.baseline_n,
        "baseline_hits": shift.baseline_hits,
        "z": round(shift.z, 2),
        "rule": rule.to_dict(),
        "at": at_ms,
    }


def alert_summary(alert: dict) -> str:
    """One line a person reads: "acme: negative 41 % of 180 posts (+23 pts vs the previous 30 min, z = 5.1)
    — refund, outage, app" (the drivers' terms, an image description's marked as such)."""
    rise = round(100 * (alert["share"] - alert["baseline_share"]))
    line = (f"{alert['brand']}: {alert['label']} {round(100 * alert['share'])} % of {alert['n']} posts "
            f"({rise:+d} pts vs the previous {alert['rule']['baseline_minutes']} min, z = {alert['z']:.1f})")
    terms = [d["term"] if d.get("side") == "text" else f"{d['term']} (image)" for d in alert.get("drivers") or ()]
    return line + (" — " + ", ".join(terms) if terms else "")


# --- Redis: atomic cooldown claim and the outbox ----------------------------------------------------

ALERT_HISTORY_MAX = 500   # alerted minutes remembered per brand (within the marker's TTL)
SEND_LEASE_MS = 15_000    # an alert taken for sending is not taken again by any worker for this long


# KEYS: the brand's alerted minutes, alerts list, outbox   ARGV: epoch minute, cooldown minutes, marker ttl s,
# alert json, keep, channel, outbox score (ms), history minutes, history max.
# The marker holds the brand's alerted epoch minutes, comma-separated and ascending (an older deployment's
# single minute reads as a list of one). A minute fires only if no alerted minute lies within the cooldown
# of it, before or after: a backfilled older minute neither moves the newest alert back nor re-arms the
# brand. Returns 1 when this caller owns the alert (recorded, published, queued in the outbox), else 0.
CLAIM_LUA = """
local m = tonumber(ARGV[1])
local cooldown = tonumber(ARGV[2])
local kept = {m}
local newest = m
local raw = redis.call('GET', KEYS[1])
if raw then
  for part in string.gmatch(raw, '[^,]+') do
    local v = tonumber(part)
    if v then
      if math.abs(m - v) < cooldown then return 0 end
      table.insert(kept, v)
      if v > newest then newest = v end
    end
  end
end
table.sort(kept)
local out = {}
for _, v in ipairs(kept) do
  if v >= newest - tonumber(ARGV[8]) then table.insert(out, string.format('%d', v)) end
end
while #out > tonumber(ARGV[9]) do table.remove(out, 1) end
redis.call('SET', KEYS[1], table.concat(out, ','), 'EX', ARGV[3])
redis.call('LPUSH', KEYS[2], ARGV[4])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
redis.call('PUBLISH', ARGV[6], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[4])
return 1
"""

# KEYS: outbox   ARGV: now ms, lease until ms, max.  Takes the alerts due for (re)sending and leases them.
TAKE_DUE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member) end
return due
"""


def claim_keys(keys: RedisKeys, brand: str) -> list[str]:
    """CLAIM_LUA's KEYS, in one hash slot: the brand's alerted minutes, the alerts list, the outbox."""
    return [keys.alert_last(brand), keys.alerts, keys.alerts_outbox]


class AlertOutbox:
    """The cooldown claim and the outbox on one client (its scripts registered once)."""

    def __init__(self, client, keys: RedisKeys):
        self.client, self.keys = client, keys
        self._claim = client.register_script(CLAIM_LUA)
        self._take_due = client.register_script(TAKE_DUE_LUA)

    async def claim(self, alert: dict, rule: AlertRule, ttl_s: int, now_ms: int = 0) -> bytes | None:
        """Record, publish and queue ``alert`` for sending unless an alert of its brand lies within the
        cooldown (atomic across workers). Returns the queued message (this caller sends it first; ``sent``
        removes it) or None. The queued copy is leased to the caller for ``SEND_LEASE_MS`` from ``now_ms``."""
        message = orjson.dumps(alert)
        fired = await self._claim(
            keys=claim_keys(self.keys, alert["brand"]),
            args=[epoch_minute(alert["minute"]), rule.cooldown_minutes, ttl_s, message, ALERTS_KEEP,
                  self.keys.live_alerts, now_ms + SEND_LEASE_MS, ttl_s // 60, ALERT_HISTORY_MAX])
        return message if fired else None

    async def take_due(self, now_ms: int, limit: int = 100) -> list[bytes]:
        """Queued alerts whose first send failed or whose sender's lease ran out; leased to this caller."""
        return await self._take_due(keys=[self.keys.alerts_outbox], args=[now_ms, now_ms + SEND_LEASE_MS, limit])

    async def sent(self, message: bytes) -> None:
        """The broker acknowledged ``message``: it leaves the outbox."""
        await self.client.zrem(self.keys.alerts_outbox, message)

    async def send_failed(self, message: bytes) -> None:
        """Make ``message`` due at once, so the next tick (of any worker) sends it again."""
        await self.client.zadd(self.keys.alerts_outbox, {message: 0}, xx=True)
