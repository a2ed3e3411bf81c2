"""Hot reload of the deployed model on the real broker and redis-server, worker as a subprocess.

The worker is pointed at a symlink; a new version is written to its own directory and the symlink is
swapped atomically (``os.replace``), as the classify module's docstring tells deployers to do. Mid-stream:
no post lost or counted twice, and the new version's id in the later results. Idle: the reload timer
picks the new version up with no batch arriving.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import orjson
import pytest

from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.worker.classify import RELOAD_CHECK_S
from tests.test_faults import Stream, assert_exact, audit, log_lines
from tests.test_pipeline import lines_of, make_settings, redis_client, stored_ids, text_posts, wait_for, workers
from tests.tiny_models import save_tiny

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, Path]:
    """Two tiny model versions with distinct ids (v2 also selects fewer rationale tokens)."""
    root = tmp_path_factory.mktemp("versions")
    out = {}
    for version, top_k in (("tiny-v1", 4), ("tiny-v2", 3)):
        directory = save_tiny(root / version, kind="bert", top_k=top_k)
        config = json.loads((directory / "config.json").read_text())
        config["version"] = version
        (directory / "config.json").write_text(json.dumps(config))
        out[version] = directory
    return out


def deploy(current: Path, target: Path) -> None:
    """Point the ``current`` symlink at ``target`` atomically."""
    staging = current.with_name(current.name + ".new")
    staging.unlink(missing_ok=True)
    os.symlink(target, staging)
    os.replace(staging, current)


def models_of(settings, ids) -> dict[str, str]:
    r = redis_client(settings)
    return {i: orjson.loads(r.get(settings.keys.post(i)))["model"] for i in ids}


def test_model_swapped_mid_stream_loses_nothing_and_later_results_carry_the_new_version(
        broker, redis_server, versions, tmp_path):
    current = tmp_path / "current"
    deploy(current, versions["tiny-v1"])
    s = make_settings(broker, redis_server, current)
    posts = text_posts(900, prefix="reload")
    ids = {p["id"] for p in posts}
    with workers(s, "all") as procs:
        worker = procs[0]
        stream = Stream(s, lines_of(posts), rate=40.0)  # ~22 s of posts
        wait_for(lambda: len(stored_ids(s)) >= 150, 120, procs, "results from v1")
        deploy(current, versions["tiny-v2"])
        swapped_at, stored_at_swap = time.monotonic(), stored_ids(s)
        wait_for(lambda: log_lines(worker, "model reloaded: tiny-v1 -> tiny-v2") == 1, RELOAD_CHECK_S + 30, procs,
                 "the reload")
        reload_s = time.monotonic() - swapped_at
        stored_at_reload = stored_ids(s)
        stream.join(120)
        wait_for(lambda: stored_ids(s) >= ids, 180, procs, "a result for every post")
    a = audit(s, posts)
    models = models_of(s, ids)
    before, after = models_of(s, stored_at_swap), {i: m for i, m in models.items() if i not in stored_at_reload}
    print(f"reloaded {reload_s:.1f} s after the swap; {len(stored_at_swap)} results before, "
          f"{sum(m == 'tiny-v2' for m in models.values())} results from tiny-v2")
    assert_exact(a)
    assert set(before.values()) == {"tiny-v1"}
    assert after and set(after.values()) == {"tiny-v2"}, "every result stored after the reload is from v2"
    assert reload_s < RELOAD_CHECK_S + 10


def test_an_idle_worker_picks_up_a_new_model_on_its_timer(broker, redis_server, versions, tmp_path):
    current = tmp_path / "current"
    deploy(current, versions["tiny-v1"])
    s = make_settings(broker, redis_server, current)
    posts = text_posts(5, prefix="idle")
    with workers(s, "classify", "caption") as procs:
        worker = procs[0]
        wait_for(lambda: log_lines(worker, "model tiny-v1 loaded") == 1, 60, procs, "v1 loaded")
        deploy(current, versions["tiny-v2"])
        swapped_at = time.monotonic()
        wait_for(lambda: log_lines(worker, "model reloaded: tiny-v1 -> tiny-v2") == 1, RELOAD_CHECK_S + 15, procs,
                 "the reload with no post arriving", every_s=0.2)
        reload_s = time.monotonic() - swapped_at
        assert stored_ids(s) == set(), "no batch arrived before the reload"
        produce_lines(s, lines_of(posts))
        wait_for(lambda: stored_ids(s) >= {p["id"] for p in posts}, 60, procs, "results")
    print(f"idle worker reloaded {reload_s:.1f} s after the swap")
    assert set(models_of(s, [p["id"] for p in posts]).values()) == {"tiny-v2"}
    assert reload_s <= RELOAD_CHECK_S + 2
