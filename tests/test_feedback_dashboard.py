"""Corrections on the operators' view, against a real monitor worker (real broker, real Redis): the API behind
the token (415/422/404/429/202, the intake keeping what was sent), the recent-corrections list, the shadow
agreement panel's numbers, a server without a token refusing corrections, and the dashboard in a real
headless Chromium (the "correct" button, the form, the list, the shadow panel)."""
from __future__ import annotations

import asyncio
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest

from affectstream.model.registry import Registry
from affectstream.streaming.tools.services import free_port
from affectstream.streaming.tools.workers import WorkerProcess
from affectstream.streaming.worker.feedback import rate_key, parse_correction
from affectstream.streaming.worker.redis_client import sync_redis
from tests.servers import workers_running
from tests.test_dashboard import CHROMIUM, Page, start_chromium
from tests.test_feedback import RESULT, history, put_results, stream_settings
from tests.test_pipeline import wait_for
from tests.test_registry import fake_model

pytestmark = pytest.mark.integration

TOKEN = "analysts-only-7f3a"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def call(port: int, path: str, body: bytes | None = None, headers: dict | None = None,
         content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=dict(headers or {}),
                                     method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read() or b"{}")
    except OSError:
        return 0, {}


def fix(post_id: str, label: str = "negative", analyst: str = "ana", **extra) -> bytes:
    return orjson.dumps({"post_id": post_id, "label": label, "analyst": analyst, **extra})


def registry_with_candidate(root: Path) -> Registry:
    reg = Registry(root / "reg")
    src = fake_model(root / "m")
    v1, v2 = reg.add(src, {}), reg.add(src, {})
    reg.promote(v1)
    reg.set_rollout(v2, "shadow", 0.1, "test")
    return reg


def test_corrections_go_through_the_token_the_checks_and_the_intake_and_the_shadow_panel_counts(
        broker, redis_server, tmp_path):
    port = free_port()
    reg = registry_with_candidate(tmp_path)
    s = stream_settings(broker, redis_server, web_port=port, web_auth_token=TOKEN, model_registry=str(reg.root))
    put_results(s, {f"d{i}": RESULT for i in range(4)})
    r = sync_redis(s)
    # what a classify worker shadowing v2 leaves: the agreement counts and the candidate's results
    r.hset(s.keys.shadow_agree("v2"), mapping={"all:positive:positive": 8, "all:positive:negative": 2,
                                               "all:neutral:neutral": 5, "brand:acme:positive:negative": 2,
                                               "brand:acme:positive:positive": 3, "brand:a:b:positive:positive": 1})
    r.set(s.keys.shadow_result("d0"), orjson.dumps({**RESULT, "id": "d0", "label": "negative", "model": "v2"}))
    r.set(s.keys.shadow_result("d1"), orjson.dumps({**RESULT, "id": "d1", "label": "positive", "model": "v2"}))
    with workers_running([WorkerProcess(s, "monitor")]) as procs:
        wait_for(lambda: call(port, "/healthz")[0] == 200, 60, procs, "the monitor's web server")
        assert call(port, "/api/feedback", fix("d0"))[0] == 401                      # no token, no write
        assert call(port, "/api/feedback")[0] == 401                                  # nor read
        assert call(port, "/api/feedback", fix("d0"), BEARER, "text/plain")[0] == 415
        status, reply = call(port, "/api/feedback", fix("d0", label="sarcastic"), BEARER)
        assert (status, reply["error"]) == (422, "label_not_in_model")
        assert call(port, "/api/feedback", fix("ghost"), BEARER)[1]["error"] == "unknown_post"
        assert call(port, "/api/feedback", fix("ghost"), BEARER)[0] == 404
        assert call(port, "/api/feedback", fix("d0", target="voltcar"), BEARER)[1]["error"] == "unknown_target"
        assert call(port, "/api/feedback", b"{", BEARER)[1]["error"] == "invalid_json"

        status, reply = call(port, "/api/feedback", fix("d0", ts=1, old_label="neutral", wrong_words=["love"],
                                                        note="sarcasm"), BEARER)
        assert status == 202, reply
        sent = reply["correction"]
        assert sent["ts"] > 1 and sent["old_label"] == "positive" and sent["model"] == "v1"  # the server's to say
        assert call(port, "/api/feedback", fix("d1", label="neutral", analyst="bob", target="acme"), BEARER)[0] == 202
        # a full minute for zed: the dashboard answers 429 before anything is produced
        zed = parse_correction(fix("d2", analyst="zed", ts=sent["ts"]))
        r.set(rate_key(s.keys, zed), 30, ex=120)
        assert call(port, "/api/feedback", fix("d2", analyst="zed"), BEARER)[0] == 429

        listed = wait_for(lambda: len(call(port, "/api/feedback", headers=BEARER)[1]) == 2
                          and call(port, "/api/feedback", headers=BEARER)[1], 60, procs, "the intake to keep both")
        assert [(c["post_id"], c["target"], c["analyst"]) for c in listed] == [("d1", "acme", "bob"), ("d0", None, "ana")]
        post = call(port, "/api/post?id=d0", headers=BEARER)[1]
        assert post["result"]["label"] == "positive" and [h["note"] for h in post["feedback"]] == ["sarcasm"]
        assert call(port, "/api/post?id=nope", headers=BEARER)[0] == 404

        status, shadow = call(port, "/api/shadow", headers=BEARER)
        assert status == 200 and shadow["version"] == "v2" and shadow["rollout"]["mode"] == "shadow"
        d = shadow["deployed"]
        assert (d["n"], d["agree"], d["rate"]) == (15, 13, round(13 / 15, 4))
        assert d["labels"]["positive"] == {"n": 10, "agree": 8, "rate": 0.8, "to": {"positive": 8, "negative": 2}}
        assert d["brands"]["acme"]["rate"] == 0.6 and d["brands"]["a:b"]["n"] == 1   # brand ids may hold ':'
        # d0: analysts say negative, deployed positive, candidate negative; d1's acme: analysts neutral, both positive
        assert shadow["analysts"] == {"n": 2, "deployed": 0, "candidate": 1, "deployed_rate": 0.0, "candidate_rate": 0.5}
    assert len(history(s, "d0")[0]) == 1 and history(s, "d2") == ([], {})   # zed's was never produced
    r.close()


def test_a_server_without_a_token_takes_no_corrections(broker, redis_server):
    port = free_port()
    s = stream_settings(broker, redis_server, web_port=port)
    put_results(s, {"n0": RESULT})
    with workers_running([WorkerProcess(s, "monitor")]) as procs:
        wait_for(lambda: call(port, "/healthz")[0] == 200, 60, procs, "the monitor's web server")
        status, reply = call(port, "/api/feedback", fix("n0"))
        assert (status, reply["error"]) == (403, "auth_required")
        assert call(port, "/api/feedback")[0] == 200                                  # reading stays as the rest


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs chromium (apt-get install -y chromium)")
def test_an_analyst_corrects_a_post_from_the_dashboard(broker, redis_server, tmp_path):
    port = free_port()
    reg = registry_with_candidate(tmp_path)
    s = stream_settings(broker, redis_server, web_port=port, web_auth_token=TOKEN, model_registry=str(reg.root))
    love = [{"text": "love", "score": 0.9, "source": "text"}]
    result = {**RESULT, "id": "ui-1", "rationale": love,
              "targets": [{**RESULT["targets"][0], "rationale": love}, RESULT["targets"][1]]}
    put_results(s, {"ui-1": result})
    r = sync_redis(s)
    r.hset(s.keys.shadow_agree("v2"), mapping={"all:positive:positive": 3, "all:positive:negative": 1})
    profile = tempfile.mkdtemp(prefix="affectstream-chromium-")
    chromium = None
    with workers_running([WorkerProcess(s, "monitor")]) as procs:
        wait_for(lambda: call(port, "/healthz")[0] == 200, 60, procs, "the monitor's web server")
        # the hub's feed: a result on the live channel, as a classify worker publishes it
        wait_for(lambda: r.publish(s.keys.live, orjson.dumps(result)) > 0, 30, procs, "the hub's subscription")
        chromium, ws_url = start_chromium(profile)

        async def drive() -> tuple[dict, list]:
            async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
                page = Page(ws)
                await page.send("Runtime.enable")
                await page.send("Page.enable")
                await page.send("Page.navigate", url=f"http://127.0.0.1:{port}/?token={TOKEN}")
                await page.wait("!!document.querySelector('#feed .post[data-id=\"ui-1\"] .fix')", what="the correct button")
                await page.wait("!!document.querySelector('#shadow-agree')", what="the shadow panel")
                await page.js("document.querySelector('#analyst').value = 'ana'")
                await page.js("document.querySelector('#feed .post[data-id=\"ui-1\"] .fix').click()")
                await page.wait("document.querySelector('#correct').open", what="the correction form")
                await page.js("""(() => { document.querySelector('#correct-target').value = 'acme';
                    document.querySelector('#correct-target').dispatchEvent(new Event('change'));
                    document.querySelector('#correct-label').value = 'negative';
                    document.querySelector('#correct-words input').checked = true;
                    document.querySelector('#correct-note').value = 'sarcasm';
                    document.querySelector('#correct-send').click(); })()""")
                await page.wait("!!document.querySelector('#corrections li[data-id=\"ui-1\"]')", 30, "the listed correction")
                state = await page.js("""({
                    open: document.querySelector('#correct').open,
                    item: document.querySelector('#corrections li[data-id="ui-1"]').textContent,
                    target: document.querySelector('#corrections li[data-id="ui-1"]').dataset.target,
                    agree: document.querySelector('#shadow-agree').textContent,
                    version: document.querySelector('#shadow-version').textContent })""")
                return state, page.errors

        try:
            state, errors = asyncio.run(drive())
        finally:
            chromium.kill()
            chromium.wait()
    r.close()
    assert not errors, errors
    assert not state["open"] and state["target"] == "acme"
    assert "positive" in state["item"] and "negative" in state["item"] and "ana" in state["item"]
    assert "wrong: love" in state["item"] and "sarcasm" in state["item"]
    assert state["agree"] == "75%" and state["version"].startswith("v2 · shadow 10%")
    kept = history(s, "ui-1")[1]["acme"]
    assert (kept["label"], kept["old_label"], kept["wrong_words"], kept["analyst"]) == ("negative", "positive",
                                                                                     ["love"], "ana")
