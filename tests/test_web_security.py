"""The worker web server's exposure: where it listens, who may read it, and what one query may cost.

Unit tests for the bind rule, the token middleware on a real aiohttp server and the /api/brands caps on a
real Redis; one integration test starts a real monitor worker (real broker, real Redis) with a token."""
from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request

import pytest
from aiohttp import web as aioweb
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from affectstream.cli import main
from affectstream.streaming.monitor.auth import COOKIE, token_middleware
from affectstream.streaming.monitor.hub import BRANDS_PER_QUERY, MAX_BUCKET_READS, LiveHub
from affectstream.streaming.tools.services import free_port
from affectstream.streaming.tools.workers import WorkerProcess
from affectstream.streaming.worker.app import WebExposureError, check_web_exposure, is_loopback
from affectstream.streaming.worker.redis_client import async_redis
from affectstream.streaming.worker.redis_keys import ALL_BRANDS, minute_bucket, minute_range
from affectstream.streaming.worker.settings import Settings
from tests.servers import settings_for, workers_running
from tests.test_pipeline import wait_for

M0 = 1764410400000  # 2025-11-29 10:00 UTC
TOKEN = "s3cret-token-for-tests"


# --- where it listens --------------------------------------------------------------------------------

@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_token(bind):
    assert is_loopback(bind)
    check_web_exposure(Settings().replace(web_bind=bind))


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "10.1.2.3", "dashboard.example"])
def test_any_other_interface_refuses_to_start_without_a_token(bind):
    with pytest.raises(WebExposureError, match="AFFECTSTREAM_WEB_AUTH_TOKEN"):
        check_web_exposure(Settings().replace(web_bind=bind))
    check_web_exposure(Settings().replace(web_bind=bind, web_auth_token=TOKEN))
    check_web_exposure(Settings().replace(web_bind=bind, web_enabled=False))  # no web server, nothing exposed


def test_the_worker_command_says_why_it_will_not_listen_everywhere_without_a_token():
    result = CliRunner().invoke(main, ["worker", "--role", "monitor", "--no-create-topics", "--web-bind", "0.0.0.0",
                                       "--broker", "kafka://127.0.0.1:1", "--redis", "redis://127.0.0.1:1/0"], env={})
    assert result.exit_code == 2 and "AFFECTSTREAM_WEB_AUTH_TOKEN" in result.output


# --- who may read it: the middleware on a real aiohttp server ----------------------------------------

def test_the_token_is_needed_everywhere_but_healthz_as_bearer_or_as_the_cookie_from_a_token_link():
    async def ok(request):
        return aioweb.json_response({"ok": True})

    async def run() -> None:
        web_app = aioweb.Application(middlewares=[token_middleware(TOKEN)])
        for path in ("/", "/api/stats", "/metrics", "/healthz"):
            web_app.router.add_get(path, ok)
        async with TestClient(TestServer(web_app)) as client:
            assert (await client.get("/healthz")).status == 200
            for path in ("/", "/api/stats", "/metrics"):
                denied = await client.get(path)
                assert denied.status == 401 and denied.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status == 401
            assert (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
            assert (await client.get("/?token=wrong", allow_redirects=False)).status == 401
            link = await client.get(f"/?token={TOKEN}&x=1", allow_redirects=False)
            assert link.status == 302 and link.headers["Location"] == "/?x=1"  # the token leaves the URL
            set_cookie = link.headers["Set-Cookie"]
            assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and TOKEN not in set_cookie
            # the client's cookie jar now holds the session: the dashboard and its API calls work
            assert COOKIE in {c.key for c in client.session.cookie_jar}
            assert (await client.get("/api/stats")).status == 200

    asyncio.run(run())


# --- what one query may cost: /api/brands on a real Redis ---------------------------------------------

def _hgetall_calls(info: dict) -> int:
    return int(info.get("cmdstat_hgetall", {}).get("calls", 0))


def test_brands_query_is_capped_and_pages_through_the_most_recently_active_brands(redis_server):
    s = settings_for(None, redis_server)
    n_brands = 130
    end = minute_bucket(M0 + 59 * 60_000)
    minutes = minute_range(end, 60)

    async def run() -> None:
        client = async_redis(s)
        async with client.pipeline(transaction=False) as pipe:
            for i in range(n_brands):  # brand i's newest data: minute i % 60 (higher i: more recent within a tie)
                pipe.hset(s.keys.brand(f"brand{i:03d}", minutes[i % 60]), mapping={"negative": 1})
                pipe.zadd(s.keys.brands, {f"brand{i:03d}": M0 + (i % 60) * 60_000 + i})
            pipe.hset(s.keys.brand(ALL_BRANDS, end), mapping={"negative": n_brands})
            pipe.zadd(s.keys.brands, {ALL_BRANDS: M0 + 59 * 60_000})
            await pipe.execute()
        hub = LiveHub(s)
        try:
            # a day-long window: one HGETALL per brand per minute would be 1440 x 131
            before = _hgetall_calls(await client.info("commandstats"))
            day = await hub.brands(minutes=1440)
            calls = _hgetall_calls(await client.info("commandstats")) - before
            assert calls <= MAX_BUCKET_READS and len(day["brands"]) == MAX_BUCKET_READS // 1440 - 1
            assert day["brands_total"] == n_brands and day["next_offset"] == len(day["brands"])
            assert day["all"]["total"] == {"negative": n_brands}

            # an hour, page by page: every brand exactly once, most recently active first, never "_all"
            pages, offset = [], 0
            while offset is not None:
                page = await hub.brands(minutes=60, offset=offset)
                assert len(page["brands"]) <= BRANDS_PER_QUERY and ALL_BRANDS not in page["brands"]
                pages.append(list(page["brands"]))
                offset = page["next_offset"]
            assert [len(p) for p in pages] == [50, 50, 30]
            assert sorted(sum(pages, [])) == [f"brand{i:03d}" for i in range(n_brands)]
            newest_first = sorted(range(n_brands), key=lambda i: -((i % 60) * 60_000 + i))
            assert set(pages[0]) == {f"brand{i:03d}" for i in newest_first[:BRANDS_PER_QUERY]}
        finally:
            await hub.stop()

    asyncio.run(run())


# --- a real monitor worker with a token -----------------------------------------------------------------

def _get(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:  # not listening (yet)
        return 0


def _connects(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


@pytest.mark.integration
def test_a_monitor_listens_only_on_its_bind_address_and_wants_the_token(broker, redis_server):
    port = free_port()
    # 127.0.0.2 is loopback too (no token needed), and distinct from 127.0.0.1: faust's default bind (every
    # interface) would answer on both
    s = settings_for(broker, redis_server, web_enabled=True, web_port=port, web_bind="127.0.0.2",
                     web_auth_token=TOKEN)
    base = f"http://127.0.0.2:{port}"
    worker = WorkerProcess(s, "monitor")
    with workers_running([worker]):
        wait_for(lambda: _get(base + "/healthz") == 200, 60, [worker], "the monitor's web server")
        assert not _connects("127.0.0.1", port)
        assert _get(base + "/api/stats") == 401 and _get(base + "/metrics") == 401 and _get(base + "/") == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert _get(base + "/api/stats", bearer) == 200 and _get(base + "/metrics", bearer) == 200
        assert _get(base + "/api/brands?minutes=1440", bearer) == 200
        assert TOKEN not in worker.log_tail(200)
