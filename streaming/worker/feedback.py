"""Analysts' corrections: the record on the ``feedback`` topic, its validation with machine-readable reasons,
and the Redis writes that keep every correction (history) and the latest one per post and target.

The record (key: post id)::

    {"post_id": "tw-1", "target": null | "<brand id>", "label": "negative", "old_label": "positive",
     "model": "<model version>", "analyst": "ana", "ts": 1764410400000,
     "wrong_words": ["love"], "note": "sarcasm"}

A correction is checked in two steps, both raising ``FeedbackError`` with a ``reason``:

* ``parse_correction`` — the shape alone (``invalid_json``, ``not_an_object``, ``missing_post_id``,
  ``missing_analyst``, ``bad_label``, ``bad_target``, ``bad_ts``, ``bad_wrong_words``, ``bad_note``,
  ``too_large``);
* ``check_against_result`` — against the post's stored result (``as:post:<id>``): ``unknown_post`` (no
  stored result: never classified, or its TTL ran out), ``label_not_in_model`` (not a label of the model
  that classified it: the result's own score labels), ``unknown_target`` (the brand is not one of the
  post's targets). ``old_label`` and ``model`` are taken from the stored result, whatever the sender said:
  what the model really answered is the server's to say.

``rate_limited``: at most ``RATE_PER_MINUTE`` corrections per analyst per UTC minute of their ``ts``
(``RedisKeys.feedback_rate``), so one account (or one stolen session) cannot flood the history; the
dashboard answers 429, ``affectstream feedback`` counts them as rejected, the intake sends them to the DLQ.

Two analysts correcting the same post (or target): both records stay in the history list
(``feedback(post_id)``, oldest first); ``feedback_latest(post_id)`` keeps, per target (``""`` for the post
itself), the one with the newest ``ts`` — the last one wins, and a redelivered older record never
overwrites a newer one. Storing is idempotent: a record already in the history is not appended again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from affectstream.model.config import SENTIMENT_LABELS
from affectstream.streaming.worker.redis_keys import RedisKeys, minute_bucket
from affectstream.streaming.worker.settings import Settings

MONITOR_GROUP_SUFFIX = "-monitor"  # the monitor's consumer group, <app_id>-monitor: its intake takes corrections in
RATE_PER_MINUTE = 30          # corrections per analyst per minute: a reader, not a script (one every 2 s)
MAX_RECORD_BYTES = 16 * 1024
MAX_ID_CHARS = 256
MAX_ANALYST_CHARS = 64
MAX_NOTE_CHARS = 1000
MAX_WRONG_WORDS = 16
MAX_WORD_CHARS = 64
FUTURE_SLACK_MS = 24 * 3600 * 1000   # a ts further ahead than this is a clock or a forgery
POST_FIELD = ""                      # feedback_latest field of a post-level correction

REASONS = ("invalid_json", "not_an_object", "too_large", "missing_post_id", "missing_analyst", "bad_label",
           "bad_target", "bad_ts", "bad_wrong_words", "bad_note", "unknown_post", "label_not_in_model",
           "unknown_target", "rate_limited")


def intake_group(settings: Settings) -> str:
    """The consumer group of the intake agent (the monitor's): the retrain job reads up to its offsets."""
    return settings.kafka.app_id + MONITOR_GROUP_SUFFIX


class FeedbackError(ValueError):
    """A correction that cannot be accepted; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str, post_id: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.post_id = post_id


@dataclass(frozen=True)
class Correction:
    post_id: str
    target: str | None        # None: the post's own label; else a brand id among the post's targets
    label: str
    old_label: str
    model: str
    analyst: str
    ts: int                   # epoch ms
    wrong_words: tuple[str, ...] = ()
    note: str = ""

    @property
    def field(self) -> str:
        """Its field in ``feedback_latest``: the brand id, or ``""`` for the post."""
        return self.target if self.target is not None else POST_FIELD

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"post_id": self.post_id, "target": self.target, "label": self.label,
                               "old_label": self.old_label, "model": self.model, "analyst": self.analyst,
                               "ts": self.ts}
        if self.wrong_words:
            out["wrong_words"] = list(self.wrong_words)
        if self.note:
            out["note"] = self.note
        return out

    def to_json(self) -> bytes:
        """Canonical bytes (fixed field order): the same correction always encodes the same, which is what
        makes storing it idempotent."""
        return orjson.dumps(self.to_dict())

    def replace(self, **changes: Any) -> "Correction":
        return Correction(**{**self.__dict__, **changes})


def now_ms() -> int:
    return int(time.time() * 1000)


def _text(obj: Mapping, name: str, reason: str, limit: int, *, required: bool, post_id: str | None) -> str:
    value = obj.get(name)
    if value is None or value == "":
        if required:
            raise FeedbackError(reason, f"'{name}' is required", post_id)
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FeedbackError(reason, f"'{name}' must be a string", post_id)
    text = str(value).strip()
    if not text and required:
        raise FeedbackError(reason, f"'{name}' is empty", post_id)
    if len(text) > limit or any(ord(c) < 32 for c in text):
        raise FeedbackError(reason, f"'{name}' is longer than {limit} characters or holds control characters",
                            post_id)
    return text


def parse_correction(raw: bytes | str | Mapping[str, Any], *, default_ts: int | None = None,
                     now: int | None = None) -> Correction:
    """The record's shape; ``default_ts`` fills a missing ``ts`` (the dashboard and the bulk command stamp
    records; on the topic ``ts`` is required). ``old_label``/``model`` are kept as sent until
    ``check_against_result`` replaces them."""
    if isinstance(raw, (bytes, bytearray, str)):
        if len(raw) > MAX_RECORD_BYTES:
            raise FeedbackError("too_large", f"record is {len(raw)} bytes (limit {MAX_RECORD_BYTES})")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise FeedbackError("invalid_json", f"not valid JSON: {e}") from None
    else:
        obj = raw
    if not isinstance(obj, Mapping):
        raise FeedbackError("not_an_object", "a correction is a JSON object")
    post_id = _text(obj, "post_id", "missing_post_id", MAX_ID_CHARS, required=True, post_id=None)
    analyst = _text(obj, "analyst", "missing_analyst", MAX_ANALYST_CHARS, required=True, post_id=post_id)
    label = obj.get("label")
    if not isinstance(label, str) or not label.strip():
        raise FeedbackError("bad_label", "'label' must be a non-empty string", post_id)
    label = label.strip().lower()
    target = obj.get("target")
    if target is not None and target != "":   # "" reads as null: the post itself
        target = _text(obj, "target", "bad_target", MAX_ID_CHARS, required=True, post_id=post_id)
    ts = obj.get("ts", default_ts)
    if ts is None:
        raise FeedbackError("bad_ts", "'ts' (epoch ms) is required", post_id)
    if isinstance(ts, bool) or not isinstance(ts, int) or ts <= 0:
        raise FeedbackError("bad_ts", f"'ts' must be a positive integer of epoch milliseconds, got {ts!r}", post_id)
    if ts > (now if now is not None else now_ms()) + FUTURE_SLACK_MS:
        raise FeedbackError("bad_ts", "'ts' is more than a day in the future", post_id)
    words = obj.get("wrong_words") or []
    if (not isinstance(words, list) or len(words) > MAX_WRONG_WORDS
            or not all(isinstance(w, str) and 0 < len(w.strip()) <= MAX_WORD_CHARS for w in words)):
        raise FeedbackError("bad_wrong_words", f"'wrong_words' must be at most {MAX_WRONG_WORDS} words of "
                                               f"1..{MAX_WORD_CHARS} characters", post_id)
    note = _text(obj, "note", "bad_note", MAX_NOTE_CHARS, required=False, post_id=post_id)
    old = obj.get("old_label")
    model = obj.get("model")
    return Correction(post_id=post_id, target=target or None, label=label,
                      old_label=old.strip().lower() if isinstance(old, str) else "",
                      model=model if isinstance(model, str) else "", analyst=analyst, ts=ts,
                      wrong_words=tuple(dict.fromkeys(w.strip() for w in words)), note=note)


def check_against_result(correction: Correction, stored: bytes | str | Mapping[str, Any] | None) -> Correction:
    """The correction checked against the post's stored result (None: there is none), with ``old_label``
    and ``model`` taken from that result."""
    pid = correction.post_id
    if stored is None:
        raise FeedbackError("unknown_post", f"no stored result for post {pid!r} (never classified, or expired)", pid)
    result = orjson.loads(stored) if isinstance(stored, (bytes, bytearray, str)) else stored
    labels = tuple(result.get("scores") or ()) or SENTIMENT_LABELS
    if correction.label not in labels:
        raise FeedbackError("label_not_in_model", f"label {correction.label!r} is not one of the model's "
                                                  f"labels {list(labels)}", pid)
    old_label = result.get("label", "")
    if correction.target is not None:
        targets = {t.get("brand"): t for t in result.get("targets") or () if isinstance(t, Mapping)}
        if correction.target not in targets and correction.target not in (result.get("brands") or ()):
            raise FeedbackError("unknown_target", f"brand {correction.target!r} is not a target of post {pid!r} "
                                                  f"(targets: {sorted(map(str, targets)) or 'none'})", pid)
        old_label = targets.get(correction.target, {}).get("label", old_label)
    return correction.replace(old_label=str(old_label), model=str(result.get("model", "")))


def rate_key(keys: RedisKeys, correction: Correction) -> str:
    return keys.feedback_rate(correction.analyst, minute_bucket(correction.ts))


RATE_TTL_S = 180  # a minute's counter outlives its minute (clock skew, late records), then goes


# --- Redis: storing a correction (one script on the post's slot, then the index) ------------------------

# KEYS: history list, latest hash   ARGV: correction json, latest field, ts
# Returns 0: already in the history (a redelivery: nothing changed); 1: appended, an equal-or-newer
# correction of the same field stays the latest; 2: appended and now the latest.
STORE_LUA = """
if redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
local current = redis.call('HGET', KEYS[2], ARGV[2])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and type(decoded) == 'table' and tonumber(decoded['ts']) and tonumber(decoded['ts']) > tonumber(ARGV[3]) then
    return 1
  end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 2
"""


def store_keys(keys: RedisKeys, post_id: str) -> list[str]:
    """STORE_LUA's KEYS, in the post's hash slot."""
    return [keys.feedback(post_id), keys.feedback_latest(post_id)]


def latest_of(history: list[bytes | str]) -> dict[str, dict]:
    """What ``feedback_latest`` holds for a history (the pure twin of STORE_LUA, for tests and readers)."""
    out: dict[str, dict] = {}
    for raw in history:
        record = orjson.loads(raw)
        field = record.get("target") or POST_FIELD
        if field not in out or out[field]["ts"] <= record["ts"]:
            out[field] = record
    return out
