"""The live dashboard in a real headless Chromium, driven over the DevTools protocol (aiohttp's websocket
client: no extra dependency), against a worker subprocess on a real broker and Redis.

Saves ``artifacts/dashboard.png`` (gitignored; ``docs/dashboard.png`` is a committed copy)."""
from __future__ import annotations

import asyncio
import base64
import collections
import itertools
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest

from affectstream.streaming.tools.workers import WorkerProcess
from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.tools.services import free_port
from tests.test_alerts import pick_texts
from tests.test_pipeline import make_settings, stored_ids, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
M0 = 1764410400000  # 2025-11-29 10:00 UTC
BRANDS = ["acme", "nimbus", "voltcar"]
CAPTIONS = ["a person smiling holding a coffee cup", "a cracked phone screen on a table", None, None]


class Page:
    """The smallest DevTools-protocol client: send a command, wait for its reply, skip events."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.ids, self.errors = ws, itertools.count(1), []

    async def send(self, method: str, **params) -> dict:
        n = next(self.ids)
        await self.ws.send_str(orjson.dumps({"id": n, "method": method, "params": params}).decode())
        while True:
            msg = orjson.loads((await self.ws.receive(timeout=30)).data)
            if msg.get("method") == "Runtime.exceptionThrown":
                self.errors.append(msg["params"]["exceptionDetails"])
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def js(self, expression: str):
        reply = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait(self, expression: str, timeout_s: float = 20.0, what: str = ""):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what or expression}")


def start_chromium(profile: str) -> tuple[subprocess.Popen, str]:
    """Headless Chromium with a DevTools port; returns (process, page websocket URL)."""
    log = open(os.path.join(profile, "chromium.log"), "w+")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1280,900", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        log.seek(0)
        match = re.search(r"DevTools listening on ws://([^/\s]+)/", log.read())
        if match:
            for _ in range(50):
                targets = orjson.loads(urllib.request.urlopen(f"http://{match.group(1)}/json/list", timeout=5).read())
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return proc, pages[0]["webSocketDebuggerUrl"]
                time.sleep(0.1)
            break
        time.sleep(0.1)
    proc.kill()
    log.seek(0)
    raise RuntimeError(f"chromium did not open its DevTools port:\n{log.read()[-2000:]}")


def calm_posts(texts: list[str], n: int = 60) -> list[dict]:
    """``n`` posts over five minutes of event time, brands in turn; every other one with an image
    description already attached (so rationale words come from both sides). Those go to
    ``posts-enriched``, the internal topic the caption stage writes (a producer's caption on ``posts`` is
    dropped): see ``produce_calm``."""
    out = []
    for i in range(n):
        post = {"id": f"calm-{i:03d}", "text": texts[i % len(texts)], "brands": [BRANDS[i % len(BRANDS)]],
                "created_at": M0 + i * 5_000}
        if CAPTIONS[i % len(CAPTIONS)]:
            post["caption"] = CAPTIONS[i % len(CAPTIONS)]
        out.append(post)
    return out


def produce_calm(s, posts: list[dict]) -> None:
    """Posts with a description straight to ``posts-enriched`` (standing in for the caption stage, as the
    bench does); the others to ``posts`` like any producer's."""
    produce_lines(s, [orjson.dumps(p) for p in posts if "caption" in p], topic=s.kafka.topic_enriched)
    produce_lines(s, [orjson.dumps(p) for p in posts if "caption" not in p])


DRIVERS_SHOWN = """[...document.querySelectorAll('#brands .drivers[data-brand=acme] .driver')]
    .map(d => d.dataset.label + ':' + d.textContent)"""


async def drive_drivers(page: Page, port: int) -> dict:
    """Each window's acme drivers on the page and from the API; a click on the first term lists its posts."""
    loop = asyncio.get_running_loop()
    windows = {}
    for minutes in (60, 1440, 10080):
        await page.js(f"document.querySelector('#driver-window button[data-minutes=\"{minutes}\"]').click()")
        await page.wait(f"document.querySelectorAll('#brands .drivers[data-minutes=\"{minutes}\"]').length === 3",
                        30, f"every brand's drivers over {minutes} minutes")
        api = await loop.run_in_executor(None, get_json, port, f"/api/drivers?brand=acme&minutes={minutes}", 30)
        windows[minutes] = (await page.js(DRIVERS_SHOWN),
                            [f"{label}:{d['term']}" for label in ("negative", "positive")
                             for d in api["labels"][label]["drivers"]])
    await page.js(f"document.querySelector('#driver-window button[data-minutes=\"60\"]').click()")
    await page.wait("document.querySelectorAll('#brands .drivers[data-brand=acme] .driver').length > 0", 30,
                    "acme's drivers over an hour")
    await page.js("document.querySelector('#brands .drivers[data-brand=acme] .driver').click()")
    await page.wait("document.querySelectorAll('#brands .brand[data-brand=acme] .carriers li[data-id]').length > 0",
                    10, "the posts carrying the clicked term")
    carriers = await page.js("[...document.querySelectorAll('#brands .brand[data-brand=acme] .carriers li[data-id]')]"
                             ".map(li => li.dataset.id)")
    why = await page.js("(document.querySelector('#alerts .alert .why') || {textContent: ''}).textContent")
    alerts = await loop.run_in_executor(None, get_json, port, "/api/alerts")
    return {"windows": windows, "carriers": carriers, "alert_why": why, "alerts": alerts}


def get_json(port: int, path: str, timeout_s: float = 5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as response:
        return orjson.loads(response.read())


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs chromium (apt-get install -y chromium)")
def test_dashboard_shows_the_streamed_brands_and_posts_and_updates_live(broker, redis_server, tiny_model_dir):
    negative, other = pick_texts(str(tiny_model_dir))
    port = free_port()
    s = make_settings(broker, redis_server, tiny_model_dir, web_enabled=True, web_port=port)
    sent = calm_posts(other)
    # while the page is open: a negative burst for acme in the next minute -> new posts and one alert
    burst = [{"id": f"burst-{i:02d}", "text": negative[i % len(negative)], "brands": ["acme"],
              "created_at": M0 + 5 * 60_000 + i * 1_000} for i in range(22)]
    burst[-1]["brands"] = ["acme", "nimbus"]  # a post about two brands: one row per brand, its words under it
    worker = WorkerProcess(s, "all")
    profile = tempfile.mkdtemp(prefix="affectstream-chromium-")
    chromium = None
    try:
        produce_calm(s, sent)
        wait_for(lambda: len(stored_ids(s)) >= len(sent), 90, [worker], "results for the streamed posts")
        wait_for(lambda: len(get_json(port, "/api/recent")) >= 50, 10, [worker], "the hub's feed")

        # the JSON API the page is built from
        api = get_json(port, "/api/brands?minutes=60")
        expected = collections.Counter(b for p in sent for b in p["brands"])
        assert {b: sum(v["total"].values()) for b, v in api["brands"].items()} == expected
        assert api["end"] == "202511291004" and len(api["minutes"]) == 60
        assert sum(api["all"]["total"].values()) == len(sent)

        chromium, ws_url = start_chromium(profile)

        async def drive() -> tuple[dict, dict, dict, bytes, list]:
            async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
                page = Page(ws)
                await page.send("Runtime.enable")
                await page.send("Page.enable")
                await page.send("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1,
                                mobile=False)
                await page.send("Page.navigate", url=f"http://127.0.0.1:{port}/")
                await page.wait("document.querySelectorAll('#brands .brand').length === 3", what="brand charts")
                await page.wait("document.querySelectorAll('#feed .post').length === 50", what="the feed")
                await page.wait("!document.querySelector('#conn').classList.contains('off')", what="SSE connected")
                state = """({
                    brands: Object.fromEntries([...document.querySelectorAll('#brands .brand')]
                        .map(b => [b.dataset.brand, +b.dataset.total])),
                    bars: document.querySelectorAll('#brands svg rect').length,
                    ids: [...document.querySelectorAll('#feed .post')].map(p => p.dataset.id),
                    textWords: document.querySelectorAll('#feed .word.text').length,
                    imageWords: document.querySelectorAll('#feed .word.image').length,
                    model: document.querySelector('#model').textContent,
                    alerts: [...document.querySelectorAll('#alerts .alert')].map(a => a.dataset.brand),
                    alerting: [...document.querySelectorAll('#brands .brand.alerting')].map(b => b.dataset.brand),
                    window: document.querySelector('#window').textContent,
                    targets: [...document.querySelectorAll('#feed .post[data-id="burst-21"] .target')].map(t =>
                        [t.dataset.brand, t.querySelector('.tname').textContent, t.dataset.label,
                         t.querySelector('.pill').textContent, t.querySelectorAll('.word').length]),
                    loose: document.querySelectorAll('#feed .post[data-id="burst-21"] > .words').length,
                })"""
                before = await page.js(state)
                await asyncio.get_running_loop().run_in_executor(
                    None, produce_lines, s, [orjson.dumps(p) for p in burst])
                await page.wait("document.querySelectorAll('#feed .post[data-id^=burst]').length === 22", 60,
                                "the burst's posts in the feed")
                await page.wait("document.querySelectorAll('#alerts .alert').length > 0", 30, "the alert banner")
                await page.wait("+document.querySelector('#brands .brand[data-brand=acme]').dataset.total === 42",
                                10, "acme's count to include the burst")
                driven = await drive_drivers(page, port)
                await asyncio.sleep(1.6)  # the new-item highlight fades before the screenshot
                after = await page.js(state)
                shot = await page.send("Page.captureScreenshot", format="png")
                return before, after, driven, base64.b64decode(shot["data"]), page.errors

        before, after, driven, png, errors = asyncio.run(drive())
    except BaseException:
        print(worker.log_tail(60))
        raise
    finally:
        if chromium is not None:
            chromium.kill()
            chromium.wait()
        shutil.rmtree(profile, ignore_errors=True)
        worker.stop()

    assert before["brands"] == dict(expected)
    assert len(set(before["ids"])) == 50 and set(before["ids"]) <= {p["id"] for p in sent}  # the newest 50
    assert before["bars"] >= 3 and before["textWords"] > 0 and before["imageWords"] > 0
    assert before["model"] == "tiny-bert" and before["window"] == "09:05–10:04 UTC"
    assert before["alerts"] == [] and before["alerting"] == []
    assert after["brands"] == {**expected, "acme": expected["acme"] + len(burst), "nimbus": expected["nimbus"] + 1}
    assert [t[:2] for t in after["targets"]] == [["acme", "acme"], ["nimbus", "nimbus"]]
    assert all(label == pill and words > 0 for _, _, label, pill, words in after["targets"])
    assert after["loose"] == 0  # every rationale word of a post with targets sits under its brand
    assert set(after["ids"][:22]) == {p["id"] for p in burst}  # on top, without a reload
    assert after["alerts"] == ["acme"] and after["alerting"] == ["acme"]
    assert after["window"] == "09:06–10:05 UTC"  # the window follows the newest minute with data
    for minutes, (shown, api) in driven["windows"].items():  # the page shows what /api/drivers says
        assert shown == api, minutes
    assert driven["windows"][60][1], "acme's burst has drivers"
    assert driven["carriers"] and set(driven["carriers"]) <= {p["id"] for p in sent + burst}
    assert driven["alert_why"].startswith(" — "), [(a.get("drivers"), a.get("summary"), a["hits"], a["n"]) for a in driven["alerts"]]
    assert errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard.png").write_bytes(png)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_the_demo_replays_the_sample_as_if_it_were_happening_now():
    from affectstream.streaming.tools.demo import shift_to_now

    lines = [orjson.dumps({"id": "a", "text": "x", "created_at": 1_000}), b"not json {",
             orjson.dumps({"id": "b", "text": "y", "created_at": 61_000}), orjson.dumps({"id": "c", "text": "z"})]
    out = shift_to_now(lines, now_ms=10_000_000)
    assert [orjson.loads(line)["created_at"] for line in (out[0], out[2])] == [9_940_000, 10_000_000]
    assert out[1] == lines[1] and out[3] == lines[3]  # anything else is sent exactly as it was
