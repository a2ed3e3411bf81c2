"""Corrections and model versions on the operators' view (added by ``register_feedback_web``):

* ``POST /api/feedback`` — an analyst corrects a post's label, one brand target's label, and/or marks
  rationale words wrong. Body (JSON): ``{"post_id", "target": null | brand, "label", "analyst",
  "wrong_words": [...], "note"}``. The server stamps ``ts`` and takes ``old_label``/``model`` from the
  stored result, checks the record (``feedback``: reasons), checks the analyst's minute against the rate
  limit, and produces it to the ``feedback`` topic keyed by post id; the monitor's intake agent keeps it.
  Answers ``202`` with the record, ``422 {"error": reason}`` for a bad one, ``404`` for ``unknown_post``,
  ``429`` for ``rate_limited``, ``415`` unless the body is ``application/json`` (a cross-site form cannot
  send that without a CORS preflight, which this server never grants), and ``403`` when the server has no
  ``web_auth_token``: corrections change what the next model learns, so they are never anonymous, even on
  loopback. The token says who may write; ``analyst`` says who did (one shared token: self-declared).
* ``GET /api/post?id=…`` — the stored result and its correction history (what the correction form shows).
* ``GET /api/feedback?limit=50`` — the newest corrections (latest per post and target), newest first.
* ``GET /api/shadow[?version=…]`` — the candidate's agreement with the deployed model, per deployed label and
  per brand (``RedisKeys.shadow_agree``), and both models' agreement with the analysts' latest corrections
  of recently corrected posts; the version defaults to the registry's candidate (``settings.classify.model_registry``).

Reads and writes sit behind the same token middleware as the rest of the view (``auth``).
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import faust
import orjson

from affectstream.streaming.worker.feedback import (RATE_PER_MINUTE, Correction, FeedbackError, check_against_result,
                                                    now_ms, parse_correction, rate_key)
from affectstream.streaming.worker.settings import Settings

log = logging.getLogger("affectstream.web")

SEND_TIMEOUT_S = 10.0
FEEDBACK_LIST_MAX = 200
SHADOW_SAMPLE_POSTS = 500     # recently corrected posts compared with the shadow results
STATUS = {"unknown_post": 404, "rate_limited": 429}


def _int(request, name: str, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(request.query.get(name, default))))
    except ValueError:
        return default


async def validate_for_web(client, settings: Settings, body: bytes, rate_limit: int = RATE_PER_MINUTE,
                           now: int | None = None) -> Correction:
    """The dashboard's check of a correction (``FeedbackError`` on a bad one): server time, stored result,
    rate limit (read only: the intake counts)."""
    now = now if now is not None else now_ms()
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise FeedbackError("invalid_json", f"not valid JSON: {e}") from None
    if isinstance(fields, dict):
        fields = {k: v for k, v in fields.items() if k not in ("ts", "old_label", "model")}  # the server's to say
    correction = parse_correction(fields, default_ts=now, now=now)
    correction = check_against_result(correction, await client.get(settings.keys.post(correction.post_id)))
    sent = await client.get(rate_key(settings.keys, correction))
    if sent is not None and int(sent) >= rate_limit:
        raise FeedbackError("rate_limited", f"analyst {correction.analyst!r} already sent {int(sent)} corrections "
                                            f"this minute (limit {rate_limit})", correction.post_id)
    return correction


async def recent_feedback(client, settings: Settings, limit: int) -> list[dict]:
    """The latest correction of each target of the ``limit`` most recently corrected posts, newest first."""
    keys = settings.keys
    ids = [i.decode() for i in await client.zrevrange(keys.feedback_index(), 0, limit - 1)]
    latest = await asyncio.gather(*(client.hgetall(keys.feedback_latest(i)) for i in ids))
    out = [orjson.loads(v) for fields in latest for v in fields.values()]
    out.sort(key=lambda r: r.get("ts", 0), reverse=True)
    return out[:limit]


def agreement_table(counts: dict[bytes | str, bytes | str | int]) -> dict[str, Any]:
    """``shadow_agree`` fields (``all:<dep>:<cand>``, ``brand:<b>:<dep>:<cand>``) -> per deployed label and per
    brand: {"n", "agree", "rate", "to": {candidate label: n}}."""
    def cell() -> dict:
        return {"n": 0, "agree": 0, "to": collections.Counter()}

    labels: dict[str, dict] = collections.defaultdict(cell)
    brands: dict[str, dict] = collections.defaultdict(cell)
    for raw_field, raw_n in counts.items():
        field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
        n = int(raw_n)
        head, _, candidate = field.rpartition(":")
        head, _, deployed = head.rpartition(":")
        if head == "all":
            slot = labels[deployed]
        elif head.startswith("brand:"):
            slot = brands[head[len("brand:"):]]
        else:
            continue
        slot["n"] += n
        slot["agree"] += n if deployed == candidate else 0
        slot["to"][candidate] += n

    def done(table: dict[str, dict]) -> dict[str, dict]:
        return {k: {**v, "to": dict(v["to"]), "rate": round(v["agree"] / v["n"], 4) if v["n"] else None}
                for k, v in sorted(table.items())}

    total = sum(v["n"] for v in labels.values())
    agree = sum(v["agree"] for v in labels.values())
    return {"n": total, "agree": agree, "rate": round(agree / total, 4) if total else None,
            "labels": done(labels), "brands": done(brands)}


async def analyst_agreement(client, settings: Settings, version: str,
                            posts: int = SHADOW_SAMPLE_POSTS) -> dict[str, Any]:
    """Of the recently corrected posts that have a shadow result of ``version``: how often the deployed
    model's and the candidate's labels match the analysts' latest label (post-level and per target)."""
    keys = settings.keys
    ids = [i.decode() for i in await client.zrevrange(keys.feedback_index(), 0, posts - 1)]
    rows = await asyncio.gather(*(asyncio.gather(client.hgetall(keys.feedback_latest(i)), client.get(keys.post(i)),
                                                 client.get(keys.shadow_result(i))) for i in ids))
    tally = {"n": 0, "deployed": 0, "candidate": 0}
    for latest, deployed_raw, shadow_raw in rows:
        if not deployed_raw or not shadow_raw:
            continue
        deployed, shadow = orjson.loads(deployed_raw), orjson.loads(shadow_raw)
        if shadow.get("model") != version:
            continue
        for field, raw in latest.items():
            wanted = orjson.loads(raw)["label"]
            target = field.decode() if isinstance(field, bytes) else field
            got = [_label_of(r, target) for r in (deployed, shadow)]
            if None in got:
                continue
            tally["n"] += 1
            tally["deployed"] += got[0] == wanted
            tally["candidate"] += got[1] == wanted
    n = tally["n"]
    return {**tally, "deployed_rate": round(tally["deployed"] / n, 4) if n else None,
            "candidate_rate": round(tally["candidate"] / n, 4) if n else None}


def _label_of(result: dict, target: str) -> str | None:
    if not target:
        return result.get("label")
    for t in result.get("targets") or ():
        if isinstance(t, dict) and t.get("brand") == target:
            return t.get("label")
    return None


def shadow_version(settings: Settings, asked: str | None) -> tuple[str | None, dict | None]:
    """The version to report (asked, else the registry's candidate) and the registry's rollout, if any."""
    rollout = None
    if settings.classify.model_registry:
        from dataclasses import asdict

        from affectstream.model.registry import Registry

        rollout = asdict(Registry(settings.classify.model_registry).rollout())
    return asked or (rollout or {}).get("candidate"), rollout


def register_feedback_web(app: faust.App, settings: Settings, hub) -> None:
    """Attach the corrections API and the shadow panel's data to the monitor's web server."""
    topic = app.affect_topics["feedback"]  # type: ignore[attr-defined]

    def no_cache(response):
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.page("/api/feedback", name="api_feedback")
    class Feedback(faust.web.View):
        async def get(self, request):
            limit = _int(request, "limit", 50, 1, FEEDBACK_LIST_MAX)
            return no_cache(self.json(await recent_feedback(hub.client, settings, limit)))

        async def post(self, request):
            if not settings.web.auth_token:
                return self.json({"error": "auth_required", "message": "corrections need a server with "
                                  "AFFECTSTREAM_WEB_AUTH_TOKEN set"}, status=403)
            if request.content_type != "application/json":
                return self.json({"error": "unsupported_media_type",
                                  "message": "send the correction as application/json"}, status=415)
            body = await request.read()
            try:
                correction = await validate_for_web(hub.client, settings, body)
            except FeedbackError as e:
                return self.json({"error": e.reason, "message": str(e)}, status=STATUS.get(e.reason, 422))
            delivery = await topic.send(key=correction.post_id.encode(), value=correction.to_json())
            await asyncio.wait_for(asyncio.shield(delivery), SEND_TIMEOUT_S)  # the broker's acknowledgement
            log.info("correction sent id=%s target=%s %s->%s by %s", correction.post_id, correction.target,
                     correction.old_label, correction.label, correction.analyst)
            return no_cache(self.json({"accepted": True, "correction": correction.to_dict()}, status=202))

    @app.page("/api/post", name="api_post")
    class PostView(faust.web.View):
        async def get(self, request):
            post_id = request.query.get("id", "")
            if not post_id or len(post_id) > settings.limits.max_id_chars:
                return self.json({"error": "missing_post_id"}, status=400)
            client, keys = hub.client, settings.keys
            stored, history = await asyncio.gather(client.get(keys.post(post_id)),
                                                   client.lrange(keys.feedback(post_id), 0, -1))
            if stored is None:
                return self.json({"error": "unknown_post"}, status=404)
            return no_cache(self.json({"result": orjson.loads(stored),
                                       "feedback": [orjson.loads(h) for h in history]}))

    @app.page("/api/shadow", name="api_shadow")
    class Shadow(faust.web.View):
        async def get(self, request):
            version, rollout = shadow_version(settings, request.query.get("version"))
            out: dict[str, Any] = {"version": version, "rollout": rollout, "deployed": None, "analysts": None}
            if version:
                counts = await hub.client.hgetall(settings.keys.shadow_agree(version))
                out["deployed"] = agreement_table(counts)
                out["analysts"] = await analyst_agreement(hub.client, settings, version)
            return no_cache(self.json(out))
