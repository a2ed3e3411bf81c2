"""Redis up but refusing writes, and a stage that dies: real broker, real redis-server, real worker processes.

* ``maxmemory 1mb`` under ``noeviction`` (what compose configures) mid-stream, then raised: the sink backs
  off as in an outage, no offset is committed past an unwritten result, one warning per interval, and
  every post ends with exactly one result once Redis takes writes again.
* a refusal that is a bug (WRONGTYPE): the worker exits non-zero promptly, so a supervisor restarts it.
* SIGTERM while Redis refuses writes: the worker stops within seconds.
"""
from __future__ import annotations

import time

import pytest
import redis

from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.tools.services import start_redis
from affectstream.streaming.tools.workers import WorkerProcess
from affectstream.streaming.worker.redis_keys import minute_bucket
from tests.servers import workers_running
from tests.test_faults import Stream, assert_exact, audit, committed, cpu_seconds, log_lines, record_audit
from tests.test_pipeline import lines_of, make_settings, redis_client, stored_ids, text_posts, wait_for

pytestmark = pytest.mark.integration


def refuse_writes(r: redis.Redis) -> None:
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1mb")


def refuses(r: redis.Redis) -> bool:
    try:
        r.set("probe", "x" * 1000)
    except redis.exceptions.ResponseError as e:
        return "OOM" in str(e) or isinstance(e, redis.exceptions.OutOfMemoryError)
    return False


def test_redis_refusing_writes_mid_stream_backs_off_and_resumes_without_loss(broker, tiny_model_dir):
    started = time.monotonic()
    server = start_redis()
    try:
        s = make_settings(broker, server, tiny_model_dir, batch_max=32)
        posts = text_posts(2000, prefix="oom")
        ids = {p["id"] for p in posts}
        r = redis_client(s)
        worker = WorkerProcess(s, "all")
        with workers_running([worker]):
            stream = Stream(s, lines_of(posts), rate=100.0)  # ~20 s of posts
            wait_for(lambda: len(stored_ids(s)) >= 400, 120, [worker], "results before the refusal")
            refuse_writes(r)
            wait_for(lambda: refuses(r), 20, [worker], "Redis refusing writes (OOM)")
            refused_at, cpu0 = time.monotonic(), cpu_seconds(worker.pid)
            time.sleep(3.0)  # offsets acked before the refusal are committed within the 1 s commit interval
            committed_early, stored_early = committed(s, s.kafka.topic_enriched), len(stored_ids(s))
            time.sleep(7.0)
            committed_late, stored_late = committed(s, s.kafka.topic_enriched), len(stored_ids(s))
            refused_s, cpu = time.monotonic() - refused_at, cpu_seconds(worker.pid) - cpu0
            assert worker.alive(), worker.log_tail(60)
            r.config_set("maxmemory", "0")
            raised_at = time.monotonic()
            wait_for(lambda: len(stored_ids(s)) > stored_late, 30, [worker], "writes resuming")
            resumed_s = time.monotonic() - raised_at
            stream.join(120)
            wait_for(lambda: stored_ids(s) >= ids, 180, [worker], "a result for every post after the refusal")
            time.sleep(1.0)
            warnings = log_lines(worker, "redis write failed")
            recovered = log_lines(worker, "redis write succeeded after")
            assert worker.alive()
        a = audit(s, posts)
    finally:
        server.stop()

    print(f"refused {refused_s:.0f} s: {stored_early} -> {stored_late} stored, worker CPU {cpu:.1f} s; "
          f"resumed {resumed_s:.1f} s after maxmemory was raised; {warnings} warnings, {recovered} recoveries")
    record_audit("Redis refusing writes (maxmemory 1mb, noeviction) ~10 s mid-stream", a, messages=len(posts),
                 started=started, notes=f"{warnings} warning lines; resumed {resumed_s:.1f} s after the limit "
                 f"was raised; committed offsets frozen while refused")
    assert_exact(a)
    assert stored_late == stored_early, "a result was stored while Redis refused writes"
    assert 0 < committed_early == committed_late, "an offset was committed while no result could be written"
    assert recovered >= 1
    assert 1 <= warnings <= 4, f"{warnings} warning lines in ~10 s: expected one per interval, not per retry"
    assert cpu < 0.5 * refused_s, f"worker spun: {cpu:.1f} s CPU in {refused_s:.0f} s of refusals"
    assert resumed_s < 15


def test_a_stage_that_crashes_takes_the_worker_down_with_a_non_zero_exit(broker, redis_server, tiny_model_dir):
    """A refusal that is a bug (WRONGTYPE: a brand bucket that is not a hash) is not retried: the classify
    agent logs it and stops the worker, which exits non-zero within seconds instead of living on idle."""
    s = make_settings(broker, redis_server, tiny_model_dir)
    posts = text_posts(6, prefix="wrongtype")
    r = redis_client(s)
    r.set(s.keys.brand("_all", minute_bucket(posts[0]["created_at"])), "not a hash")
    worker = WorkerProcess(s, "classify")
    caption = WorkerProcess(s, "caption")
    with workers_running([worker, caption]):
        wait_for(lambda: "classify" in open(worker.log_path, errors="replace").read(), 60, [worker], "worker up")
        time.sleep(3.0)
        produce_lines(s, lines_of(posts))
        sent = time.monotonic()
        deadline = sent + 60
        while worker.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        exit_s = time.monotonic() - sent
        code = worker.proc.poll()
        log = open(worker.log_path, errors="replace").read()
    print(f"worker exited {code} {exit_s:.1f} s after the posts were produced")
    assert code is not None, f"worker still running 60 s after a non-retryable error:\n{log[-3000:]}"
    assert code != 0
    assert "WRONGTYPE" in log and "crashed" in log
    assert log.count("redis write failed") == 0, "WRONGTYPE must not be retried"


def test_sigterm_stops_a_worker_whose_redis_refuses_writes(broker, tiny_model_dir):
    server = start_redis()
    try:
        s = make_settings(broker, server, tiny_model_dir)
        posts = text_posts(200, prefix="term")
        r = redis_client(s)
        worker = WorkerProcess(s, "all")
        with workers_running([worker]):
            produce_lines(s, lines_of(posts[:100]))
            wait_for(lambda: len(stored_ids(s)) >= 100, 120, [worker], "results before the refusal")
            refuse_writes(r)  # and below what is used now, however little that is
            r.config_set("maxmemory", str(max(r.info("memory")["used_memory"] - 100_000, 100_000)))
            wait_for(lambda: refuses(r), 20, [worker], "Redis refusing writes (OOM)")
            produce_lines(s, lines_of(posts[100:]))
            wait_for(lambda: log_lines(worker, "redis write failed") >= 1, 60, [worker], "the sink retrying")
            time.sleep(1.0)
            stopped_at = time.monotonic()
            worker.proc.terminate()
            try:
                code = worker.proc.wait(30)
            except Exception:  # noqa: BLE001 - reported below
                code = None
            stop_s = time.monotonic() - stopped_at
            log = worker.log_tail(40)
        stored = len(stored_ids(s))
    finally:
        server.stop()
    print(f"SIGTERM -> exit {code} in {stop_s:.1f} s; {stored} of {len(posts)} stored")
    assert code is not None, f"worker ignored SIGTERM for 30 s while Redis refused writes:\n{log}"
    assert stop_s < 10, f"worker took {stop_s:.1f} s to stop:\n{log}"
    assert stored == 100
