"""Dead-letter records: what went wrong, where, and the original bytes (bounded)."""
from __future__ import annotations

import contextlib
import base64
import re
import time

import orjson

STAGES = frozenset({"parse", "caption", "classify", "feedback"})  # feedback: the monitor's intake of analysts' corrections
MAX_RAW_BYTES = 64 * 1024      # one huge message cannot blow up the DLQ
MAX_ERROR_CHARS = 1000
MAX_ID_CHARS = 256
_ID_RE = re.compile(rb'"id"\s*:\s*(?:"((?:[^"\\]|\\.){1,256})"|(-?\d{1,20}))')


def dlq_record(raw: bytes, reason: str, stage: str, error: str, post_id: str | None) -> tuple[bytes | None, bytes]:
    """(key, value) for the DLQ topic: key is the post id when known; value is
    {"reason", "stage", "error", "raw_b64", "raw_bytes", "raw_truncated", "post_id", "at"}."""
    if stage not in STAGES:
        raise ValueError(f"unknown DLQ stage {stage!r}; expected one of {sorted(STAGES)}")
    raw = bytes(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else b""
    value = {
        "reason": reason,
        "stage": stage,
        "error": (error or "")[:MAX_ERROR_CHARS],
        "raw_b64": base64.b64encode(raw[:MAX_RAW_BYTES]).decode("ascii"),
        "raw_bytes": len(raw),
        "raw_truncated": len(raw) > MAX_RAW_BYTES,
        "post_id": post_id,
        "at": int(time.time() * 1000),
    }
    key = post_id.encode("utf-8", "replace") if post_id else None
    return key, orjson.dumps(value)


def post_id_guess(raw: bytes) -> str | None:
    """Best-effort id for the DLQ key of a message that failed to parse; never raises."""
    with contextlib.suppress(Exception):  # not JSON at all: fall back to a scan of the bytes
        obj = orjson.loads(raw)
        if isinstance(obj, dict):
            found = obj.get("id")
            if isinstance(found, (str, int)) and not isinstance(found, bool) and str(found):
                return str(found)[:MAX_ID_CHARS]
            return None
    try:
        match = _ID_RE.search(bytes(raw[:MAX_RAW_BYTES]))
        if not match:
            return None
        found = match.group(1) or match.group(2)
        return found.decode("utf-8", "replace")[:MAX_ID_CHARS]
    except Exception:  # noqa: BLE001
        return None
