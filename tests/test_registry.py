"""The model registry on disk (model.registry) and the feedback/shadow Redis keys' hash slots."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from redis.crc import key_slot

from affectstream.model.registry import Registry, RegistryError
from affectstream.streaming.worker.redis_keys import RedisKeys


def fake_model(folder: Path, version: str = "trained-x") -> Path:
    """A directory shaped like a deployed model (the registry copies files; it never loads weights)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"version": version, "sentiment_labels": ["negative", "neutral", "positive"]}))
    (folder / "model.safetensors").write_bytes(os.urandom(64))
    (folder / "metrics.json").write_text(json.dumps({"test": {"macro_f1": 0.5}}))
    return folder


def test_add_copies_in_numbered_versions_with_lineage_and_the_version_in_config(tmp_path):
    reg = Registry(tmp_path / "reg")
    src = fake_model(tmp_path / "m1")
    assert reg.versions() == [] and reg.current() == ""
    v1 = reg.add(src, {"base_version": None, "reason": "bootstrap"})
    v2 = reg.add(src, {"base_version": v1, "feedback_offsets": {"0": 12}})
    assert (v1, v2) == ("v1", "v2") and reg.versions() == ["v1", "v2"]
    assert json.loads((reg.version_dir(v2) / "config.json").read_text())["version"] == "v2"
    assert json.loads((src / "config.json").read_text())["version"] == "trained-x"  # source untouched
    lineage = reg.lineage(v2)
    assert lineage["base_version"] == "v1" and lineage["feedback_offsets"] == {"0": 12}
    assert lineage["source_version"] == "trained-x"
    assert reg.metrics(v2) == {"test": {"macro_f1": 0.5}}
    assert (reg.version_dir(v2) / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert not [p for p in (reg.root / "versions").iterdir() if p.name.startswith(".")]  # no staging left


def test_add_refuses_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="not a model directory"):
        Registry(tmp_path / "reg").add(tmp_path / "empty", {})


def test_promote_swaps_the_current_link_and_resets_the_rollout(tmp_path):
    reg = Registry(tmp_path / "reg")
    src = fake_model(tmp_path / "m")
    v1, v2 = reg.add(src, {}), reg.add(src, {})
    reg.promote(v1, "first")
    assert reg.current_dir().is_symlink() and reg.current_dir().resolve() == reg.version_dir(v1).resolve()
    assert os.readlink(reg.current_dir()) == "versions/v1"  # relative: the root can move
    reg.set_rollout(v2, "shadow", 0.1, "try it")
    assert reg.rollout().mode == "shadow" and reg.rollout().candidate == v2 and reg.rollout().share == 0.1
    reg.promote(v2, "better")
    r = reg.rollout()
    assert (r.current, r.candidate, r.mode, r.share) == (v2, None, "off", 0.0)
    assert json.loads((reg.current_dir() / "config.json").read_text())["version"] == "v2"
    events = [(h["event"], h.get("version"), h.get("from")) for h in reg.history()]
    assert events == [("add", "v1", None), ("add", "v2", None), ("promote", "v1", None),
                      ("rollout", "v2", None), ("promote", "v2", "v1")]


def test_rollback_pops_promotions_and_refuses_when_there_is_nothing_before(tmp_path):
    reg = Registry(tmp_path / "reg")
    src = fake_model(tmp_path / "m")
    v1, v2, v3 = (reg.add(src, {}) for _ in range(3))
    reg.promote(v1)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback()
    reg.promote(v2)
    reg.promote(v3)
    assert reg.rollback("v3 disagrees with analysts") == v2
    assert reg.rollback("again") == v1       # a second rollback goes further back, not back to v3
    assert reg.current() == v1
    with pytest.raises(RegistryError):
        reg.rollback()
    assert reg.history()[-1]["reason"] == "again" and reg.rollout().reason.startswith("rollback")


def test_set_rollout_validates_mode_share_and_candidate(tmp_path):
    reg = Registry(tmp_path / "reg")
    src = fake_model(tmp_path / "m")
    v1, v2 = reg.add(src, {}), reg.add(src, {})
    with pytest.raises(RegistryError, match="nothing is deployed"):
        reg.set_rollout(v2, "canary", 0.25)
    reg.promote(v1)
    for args in [(v2, "blue", 0.1), (v2, "shadow", 1.5), ("v9", "shadow", 0.1), (v1, "canary", 0.5), (None, "shadow", 0.1)]:
        with pytest.raises(RegistryError):
            reg.set_rollout(*args)
    with pytest.raises(RegistryError, match="not a version id"):
        reg.promote("../../etc")
    r = reg.set_rollout(v2, "canary", 0.25, "staged")
    assert (r.current, r.candidate, r.mode, r.share, r.reason) == (v1, v2, "canary", 0.25, "staged")
    assert Registry(reg.root).rollout() == r                    # read back from rollout.json
    off = reg.set_rollout(v2, "off", 0.3)
    assert (off.candidate, off.share) == (None, 0.0)
    assert not [p for p in reg.root.iterdir() if p.name.endswith(".tmp")]


def test_readers_never_see_a_missing_current_link_while_versions_swap(tmp_path):
    """os.replace of a fresh symlink: a concurrent reader always resolves to some whole version."""
    reg = Registry(tmp_path / "reg")
    src = fake_model(tmp_path / "m")
    v1, v2 = reg.add(src, {}), reg.add(src, {})
    reg.promote(v1)
    stop, seen, bad = threading.Event(), set(), []

    def read():
        while not stop.is_set():
            try:
                seen.add(json.loads((reg.current_dir() / "config.json").read_text())["version"])
            except (OSError, ValueError) as e:
                bad.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(200):
        reg.promote(v2 if i % 2 == 0 else v1)
    stop.set()
    reader.join()
    assert not bad and seen == {"v1", "v2"}


def test_feedback_and_shadow_keys_of_a_post_share_the_posts_slot():
    keys = RedisKeys("as:")
    for post_id in ["tw-1", "odd{3}-3", "}{", "a{}b", "{x}y{z}"]:
        slot = key_slot(keys.post(post_id).encode())
        for key in (keys.post_input(post_id), keys.shadow_result(post_id), keys.feedback(post_id),
                    keys.feedback_latest(post_id), keys.seen(post_id)):
            assert key_slot(key.encode()) == slot, (post_id, key)
        assert len({keys.post_input(post_id), keys.shadow_result(post_id), keys.feedback(post_id),
                    keys.feedback_latest(post_id)}) == 4
    assert keys.post_input("a") != keys.post_input("b")
    assert keys.shadow_agree("v2") == "as:shadow:agree:v2"
    assert keys.feedback_index() == "as:feedback:index"
    assert keys.feedback_rate("ann", "202611291640") == "as:feedback:rate:202611291640:ann"
