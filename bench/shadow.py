"""Shadow scoring's cost on classify throughput (issue goal: shadow at 10% of traffic costs at most 12%).

The same posts go through the classify stage itself (``Classifying.process``: parse, train/serve check,
predict, targets, Result JSON, and with shadow on the hash pick, the candidate's one extra call on the
shadowed subset and its Results) with shadow off and with shadow at ``share``, interleaved round after round;
each variant keeps its best round (``bench.classify.interleaved``: on a shared host the least disturbed
round). The candidate is a second, separately loaded copy of the deployed model, so it costs what a
retrained candidate of the same architecture costs. Kafka, the sinks and the shadow's Redis/topic writes
are left out: the sinks are the same for both variants, and the shadow writes run off the batch's path
(a background task per batch), not in the inference thread that bounds throughput.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from affectstream.bench.classify import interleaved
from affectstream.bench.workload import posts as workload_posts
from affectstream.streaming.worker.rollout import Candidate
from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.shadow import shadowed

COST_GOAL = 0.12  # shadow at 10%: at most 12% fewer posts/s


def enriched_posts(n: int, seed: int = 0) -> list[bytes]:
    """n posts as the classify stage reads them (``posts-enriched``): sample tweets, a third described."""
    out = []
    for i, (text, description) in enumerate(workload_posts(n, seed)):
        post = {"id": f"bench-{seed}-{i}", "text": text, "brands": ["acme"] if i % 3 == 0 else [],
                "created_at": 1764410400000 + i}
        if description:
            post["caption"] = description
        out.append(orjson.dumps(post))
    return out


def bench_shadow(model_dir: str | Path, *, share: float = 0.1, n_posts: int = 1024, batch: int = 32,
                 rounds: int = 5, device: str = "cpu") -> dict:
    """Posts/s of the classify stage with shadow off and at ``share``, and the cost (1 - on/off)."""
    from affectstream.model.predictor import BatchPredictor
    from affectstream.streaming.worker.classify import Classifying

    deployed = BatchPredictor.from_directory(model_dir, device=device)
    candidate = BatchPredictor.from_directory(model_dir, device=device)
    stage = Classifying(Settings(captioner="none", batch_max=batch), lambda: deployed, watch=False)
    raws = enriched_posts(n_posts)
    batches = [raws[i:i + batch] for i in range(0, len(raws), batch)]
    loop = asyncio.new_event_loop()
    shadow_results = 0

    def run(with_shadow: bool) -> int:
        nonlocal shadow_results
        stage.candidate = Candidate(candidate, "shadow", share) if with_shadow else None
        done = 0
        for chunk in batches:
            out = loop.run_until_complete(stage.process(chunk))
            done += len(out.sink_items)
            shadow_results += len(out.shadow) if with_shadow else 0
        return done

    try:
        loop.run_until_complete(stage.start())
        run(True)  # warm-up: both models' first calls
        shadow_results = 0
        best = interleaved({"off": lambda: run(False), "shadow": lambda: run(True)}, rounds)
    finally:
        stage.close()
        loop.close()
    ids = [orjson.loads(r)["id"] for r in raws]
    cost = 1.0 - best["shadow"].posts_per_s / best["off"].posts_per_s
    return {
        "model": str(model_dir), "device": device, "posts": n_posts, "batch": batch, "rounds": rounds,
        "share": share, "shadowed_posts": sum(shadowed(i, share) for i in ids),
        "shadow_results_per_round": shadow_results // rounds,
        "off_posts_per_s": round(best["off"].posts_per_s, 1),
        "shadow_posts_per_s": round(best["shadow"].posts_per_s, 1),
        "cost": round(cost, 4), "goal": COST_GOAL, "met": cost <= COST_GOAL,
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", nargs="?", default="models/default")
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--posts", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(orjson.dumps(bench_shadow(args.model_dir, share=args.share, n_posts=args.posts, batch=args.batch,
                                    rounds=args.rounds), option=orjson.OPT_INDENT_2).decode())
