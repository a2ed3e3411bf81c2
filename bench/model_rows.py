"""The model-lifecycle rows of ``affectstream bench``: shadow scoring's cost, MPNet-base serving, retraining time,
and what brand drivers cost (the sink, Redis memory, ``/api/drivers``).

Each row lives in its own module (``bench/shadow.py``, ``bench/mpnet.py``, ``bench/retrain.py``); this one
only runs them with the bench's sizes, prints them and turns their goals into target rows:
- shadow at 10 % of traffic costs at most 12 % of classify throughput (issue: feedback loop);
- MPNet-base serving (only where the ``[mpnet]`` pieces are installed; otherwise the reason is printed);
- the retraining job with 1,000 corrections within a plain retrain × (examples ratio) × 1.10 — opt-in
  (``--retrain-bench``): it trains the default preset twice;
- driver terms add at most 20 % to the Redis sink's time (``bench/drivers.py``, on a redis-server of its own).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable


def run_rows(*, posts: int, rounds: int, device: str, root: Path, peers_model: str, retrain: bool,
             drivers: tuple[int, int] = (200, 1000), say: Callable[[str], None] = print) -> dict:
    from affectstream.bench.mpnet import mpnet_row
    from affectstream.bench.shadow import bench_shadow
    from affectstream.model.encoders import EncoderUnavailable

    out: dict = {}
    if Path(peers_model, "config.json").is_file():
        say(f"shadow cost: {peers_model}, 10% of {2 * posts} posts, {rounds + 2} rounds ...")
        out["shadow"] = bench_shadow(peers_model, share=0.1, n_posts=2 * posts, batch=32, rounds=rounds + 2,
                                     device="cpu")
    say("mpnet serving ...")
    try:
        out["mpnet"] = mpnet_row(root, posts=min(posts, 128), batch=32, rounds=rounds, device=device, say=say)
    except EncoderUnavailable as e:
        out["mpnet"] = {"skipped": str(e).splitlines()[0]}
    if retrain:
        from affectstream.bench.retrain import bench_retrain

        out["retrain"] = bench_retrain(tempfile.mkdtemp(prefix="affectstream-retrain-bench-"), say=say)
    from affectstream.bench.drivers import DriverBench, bench_drivers

    say(f"drivers: sink cost, a brand-day, {drivers[1]} brands × 7 days ...")
    out["drivers"] = bench_drivers(DriverBench(sink_batches=drivers[0], brands=drivers[1]))
    return out


def rows_table(r: dict) -> list[str]:
    lines: list[str] = []
    if s := r.get("shadow"):
        lines += [f"shadow scoring — {s['model']}, {s['posts']} posts, batch {s['batch']}, {s['rounds']} rounds, "
                  f"{s['shadowed_posts']} shadowed at {100 * s['share']:.0f}%, {s.get('backend', 'torch')}, {s['torch_threads']} torch threads",
                  f"CPU s per 1k posts {s['off_cpu_s_per_1k_posts']} off -> {s['shadow_cpu_s_per_1k_posts']} shadow "
                  f"(cost {100 * s['cost']:.1f}%); posts/s {s['off_posts_per_s']} -> {s['shadow_posts_per_s']} "
                  f"(wall cost {100 * s['wall_cost']:.1f}%, per round "
                  f"{', '.join(f'{100 * c:.1f}%' for c in s['wall_cost_per_round'])})", ""]
    m = r.get("mpnet")
    if m and "skipped" in m:
        lines += [f"mpnet serving: skipped ({m['skipped']})", ""]
    elif m:
        lines += [f"mpnet serving — {m['encoder']}, {m['device']} {m['dtype_serving']}, batch {m['batch']}: "
                  f"{m['serving_posts_per_s']:.1f} posts/s ({m['tokens_per_post']:.1f} tokens/post, load average "
                  f"{m['load_average'][0]} -> {m['load_average'][1]})", ""]
    if t := r.get("retrain"):
        lines += [f"retraining — preset {t['preset']}, {t['corrections']} corrections ({t['status']}): plain "
                  f"{t['plain_s']} s, retrain {t['retrain_s']} s, goal <= {t['goal_s']} s "
                  f"(plain x examples ratio {t['examples_ratio']} x {1 + t['margin']:.2f})", ""]
    if d := r.get("drivers"):
        from affectstream.bench.drivers import rows as driver_rows

        lines += ["| brand drivers (bench/drivers.py) | value | goal |", "|---|---|---|", *driver_rows(d), ""]
    return lines


def rows_targets(r: dict) -> list[dict]:
    rows = []
    if s := r.get("shadow"):
        rows.append({"target": "shadow at 10%: classify CPU cost", "value": s["cost"], "goal": s["goal"],
                     "unit": "share, at most", "met": s["met"]})
    if t := r.get("retrain"):
        rows.append({"target": f"retrain ({t['corrections']} corrections) seconds", "value": t["retrain_s"],
                     "goal": t["goal_s"], "unit": "s, at most", "met": t["met"]})
    if d := r.get("drivers"):
        for s in d["sinks"]:
            rows.append({"target": f"drivers: added Redis sink time ({s['brands']:,} brands, {s['words']} words)",
                         "value": s["added"], "goal": s["goal"], "unit": "share, at most",
                         "met": s["added"] <= s["goal"]})
    return rows
