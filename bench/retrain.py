"""The retraining job against a plain retrain of the same preset: same machine, same run, one after the other.

1. **plain**: ``training.train.train(PRESETS[preset])`` — what ``affectstream train --preset …`` does; its
   model plays the deployed one.
2. **retrain**: ``training.retrain.retrain`` with ``corrections`` analyst corrections (``synthetic_corrections``:
   sarcasm, slang and product-name posts whose labels move between all three classes in fixed shares,
   so the flood guard passes on VADER's class sizes) — mix, train the candidate, evaluate it and the
   deployed model on the base test sets and the held-out corrections, decide.

The candidate trains on more examples than the plain run (each training correction ``correction_weight``
times), so the goal scales the plain time by the ratio of training examples and adds ``MARGIN`` (10 %) for
the two extra evaluations: ``retrain_s ≤ plain_s × examples_ratio × 1.10``. The Kafka and Redis part of the
job (reading 1,000 corrections, joining them) takes seconds and is not in this row.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

from affectstream.training.config import PRESETS
from affectstream.training.retrain import CorrectedPost, RetrainOptions, retrain
from affectstream.training.train import train

MARGIN = 0.10
# (old label, new label, share of the corrections): sarcasm read as positive, slang read as negative, new
# product names read as neutral
MOVES = [("positive", "negative", 0.4), ("negative", "positive", 0.3), ("neutral", "negative", 0.15),
         ("neutral", "positive", 0.15)]
TEMPLATES = {
    ("positive", "negative"): ["oh great, {thing} broke again, just what i needed #{n}",
                               "love waiting {n} minutes for {thing} support, really love it"],
    ("negative", "positive"): ["this {thing} is sick, absolutely killing it #{n}", "{thing} is wicked good, no cap {n}"],
    ("neutral", "negative"): ["the new {thing} x{n} dropped today. returned it", "got the {thing} pro {n}, nope"],
    ("neutral", "positive"): ["the new {thing} x{n} dropped today. obsessed", "got the {thing} pro {n}, keeper"],
}
THINGS = ["phone", "app", "laptop", "router", "charger", "headset", "console", "watch"]


def synthetic_corrections(n: int, seed: int = 0) -> list[CorrectedPost]:
    """``n`` corrections of distinct posts, moved between the classes in the shares of ``MOVES``."""
    rng = random.Random(seed)
    out: list[CorrectedPost] = []
    for old, new, share in MOVES:
        for _ in range(round(n * share)):
            i = len(out)
            text = rng.choice(TEMPLATES[(old, new)]).format(thing=rng.choice(THINGS), n=i)
            out.append(CorrectedPost(post_id=f"bench-{i}", target=None, text=text, caption="", label=new,
                                     old_label=old, analyst=f"analyst-{i % 7}", ts=1764410400000 + i))
    return out[:n]


def bench_retrain(work_dir: str | Path, preset: str = "default", corrections: int = 1000,
                  options: RetrainOptions = RetrainOptions(), say=print) -> dict:
    """The plain and the retraining run of ``preset`` and the row comparing them."""
    work = Path(work_dir)
    cfg = PRESETS[preset].replace(resume=False, out_dir=str(work / "plain"), run_dir=str(work / "plain-run"))
    say(f"retrain bench: plain training of preset {preset} …")
    started = time.perf_counter()
    plain = train(cfg, progress=False)
    plain_s = time.perf_counter() - started
    say(f"retrain bench: {plain_s:.0f} s; the retraining job with {corrections} corrections …")
    started = time.perf_counter()
    result = retrain(cfg, synthetic_corrections(corrections), plain.out_dir, work / "retrain", options)
    retrain_s = time.perf_counter() - started
    base_train = sum(d["counts"]["train"][label] for d in plain.metrics["data"].values()
                     for label in d["counts"]["train"])
    extra = result.mix.counts.get("train", 0) * options.correction_weight
    examples_ratio = (base_train + extra) / base_train
    bound = plain_s * examples_ratio * (1 + MARGIN)
    return {"preset": preset, "corrections": corrections, "status": result.status, "plain_s": round(plain_s, 1),
            "retrain_s": round(retrain_s, 1), "phases_s": result.seconds, "base_train_examples": base_train,
            "correction_examples": extra, "examples_ratio": round(examples_ratio, 3), "goal_s": round(bound, 1),
            "margin": MARGIN, "met": retrain_s <= bound, "table": result.table}
