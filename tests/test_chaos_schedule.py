"""The chaos run's pure parts: the seeded fault schedule, the workload, the steered captioner, and the
reliability table's chaos row (no broker, no Redis)."""
from __future__ import annotations

import collections

import pytest
from PIL import Image

from affectstream.bench.chaos_schedule import ACTIONS, chaos_schedule, timeline
from affectstream.bench.chaos_worker import SteeredCaptioner, write_control
from affectstream.bench.chaos_workload import HOSTILE_REASONS, build
from affectstream.bench.reliability import Row, keep_chaos_row, markdown_table, merge_chaos_row

SLOTS = ("caption-0", "caption-1", "classify-0", "classify-1")


def test_schedule_is_deterministic_for_a_seed():
    assert chaos_schedule(7, 120, SLOTS) == chaos_schedule(7, 120, list(reversed(SLOTS)))
    assert chaos_schedule(7, 120, SLOTS) != chaos_schedule(8, 120, SLOTS)


@pytest.mark.parametrize("horizon", [10, 60, 120, 600])
@pytest.mark.parametrize("seed", range(25))
def test_schedule_covers_every_action_and_kills_each_role(seed, horizon):
    faults = chaos_schedule(seed, horizon, SLOTS)
    assert {f.action for f in faults} == set(ACTIONS)
    killed = {f.target.split("-")[0] for f in faults if f.action == "kill_worker"}
    assert killed == {"caption", "classify"}
    # on a horizon of 60 s or more every fault starts within it (shorter: the second captioner fault
    # waits for the first to end)
    assert all(0 <= f.t < max(horizon, 40) for f in faults)
    assert [f.t for f in faults] == sorted(f.t for f in faults)


@pytest.mark.parametrize("seed", range(25))
def test_schedule_never_overlaps_faults_on_one_target_and_bounds_outages(seed):
    faults = chaos_schedule(seed, 600, SLOTS, max_outage_s=10.0)
    by_target = collections.defaultdict(list)
    for f in faults:
        by_target[f.target].append(f)
        assert f.target in {*SLOTS, "redis", "broker", "captioner"}
        assert f.duration > 0
        if f.action in ("stop_redis", "freeze_broker"):
            assert f.duration <= 10.0
    for same in by_target.values():
        for a, b in zip(same, same[1:]):
            assert b.t >= a.end, f"{b} starts while {a} is still on"
    assert len(faults) > 50  # a 600 s horizon with a 6 s mean gap


def test_timeline_heals_before_it_breaks_again():
    faults = chaos_schedule(3, 120, SLOTS)
    edges = timeline(faults)
    assert len(edges) == 2 * len(faults)
    assert [t for t, _, _ in edges] == sorted(t for t, _, _ in edges)
    on: set = set()
    for _, edge, f in edges:
        if edge == "begin":
            assert f.target not in on
            on.add(f.target)
        else:
            on.discard(f.target)
    assert not on


def test_workload_mix_is_seeded():
    wl = build(2000, 5)
    assert wl.lines == build(2000, 5).lines and wl.lines != build(2000, 6).lines
    assert wl.messages == 2000 and len(wl.hostile) == 100 and wl.duplicates == 60
    assert len(wl.valid) == 2000 - 100 - 60
    assert {h.kind for h in wl.hostile} == set(HOSTILE_REASONS)
    counts = collections.Counter(wl.lines)
    assert sum(n - 1 for n in counts.values()) == wl.duplicates  # every extra copy is a duplicate send
    assert all(p["text"].strip() for p in wl.valid.values())   # a failing captioner never dead-letters one
    images = collections.Counter(p["image"]["b64"] for p in wl.valid.values() if "image" in p)
    assert wl.image_posts == sum(images.values()) and max(images.values()) > 1  # reposted: cache hits


def test_steered_captioner_follows_its_control_file(tmp_path):
    control = tmp_path / "captioner.json"
    captioner = SteeredCaptioner(str(control))
    img = Image.new("RGB", (8, 6), (10, 20, 30))
    assert captioner.describe([img]) == ["objects: picture. scene: 8x6, mean colour rgb(10, 20, 30)."]
    write_control(control, "fail")
    with pytest.raises(RuntimeError):
        captioner.describe([img])
    write_control(control, "slow", (0.05, 0.05))
    assert len(captioner.describe([img, img])) == 2
    write_control(control, "ok")
    assert captioner.describe([img])


def test_chaos_row_replaces_the_previous_one_and_survives_a_scenario_rerun():
    scenarios = markdown_table([Row("worker crash", 10, 10, 0, 0, 0)], title="## T", footer="Generated x")
    first = merge_chaos_row(scenarios, Row("chaos run, seed 1", 100, 90, 5, 0, 0, "a"), "Chaos row: one")
    second = merge_chaos_row(first, Row("chaos run, seed 2", 200, 180, 10, 0, 0, "b"), "Chaos row: two")
    assert "seed 1" not in second and "Chaos row: one" not in second
    assert second.count("| chaos run, seed 2 |") == 1 and second.rstrip().endswith("Chaos row: two")
    assert "| worker crash |" in second
    rerun = keep_chaos_row(second, scenarios)
    assert "| chaos run, seed 2 |" in rerun and "Chaos row: two" in rerun and "Generated x" in rerun
