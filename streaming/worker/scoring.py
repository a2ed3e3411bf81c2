"""Scoring a micro-batch with one model: the brands each post is about (``post_targets``), the post-level
and per-target predictions (``score``), with the post-by-post fallback when a batch call fails (``infer``).
The classify stage calls it once per model a batch runs on: the deployed one and, during a rollout, the
candidate (``rollout.py``, ``shadow.py``)."""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from affectstream.model.targets import TargetInput
from affectstream.streaming.worker.result import Result, target_entry
from affectstream.streaming.worker.schemas import Post

if TYPE_CHECKING:
    from affectstream.streaming.worker.mentions import Mention

log = logging.getLogger("affectstream.classify")


@dataclass(frozen=True)
class Target:
    """A brand a post is about: its id, the name the model is told, the mentions that made it one (none for
    a brand only the producer asserted)."""
    brand: str
    name: str
    mentions: tuple[Mention, ...] = ()

    def model_input(self, post: Post) -> TargetInput:
        spans = tuple(tuple(m.span) for m in self.mentions if m.source == "text")
        return TargetInput(text=post.text, description=post.caption or "", target=self.name, spans=spans)


def post_targets(post: Post, cap: int) -> tuple[list[Target], int]:
    """The post's targets and how many were left out: the brands of its mentions in order of first mention,
    then its asserted ``brands`` that no mention named (in their order), at most ``cap``."""
    by_brand: dict[str, list[Mention]] = {}
    for mention in post.mentions:
        by_brand.setdefault(mention.brand, []).append(mention)
    for brand in post.brands:
        by_brand.setdefault(brand, [])
    brands = list(by_brand)
    kept = brands[:max(cap, 0)]
    return ([Target(b, by_brand[b][0].name if by_brand[b] else b, tuple(by_brand[b])) for b in kept],
            len(brands) - len(kept))


@dataclass
class Scored:
    """One post's predictions by one model: post level, its targets (and how many were left out) and one
    prediction per target; a failure is the exception in place of a prediction."""
    pred: Any
    targets: list[Target]
    overflow: int
    target_preds: Any

    @property
    def failure(self) -> BaseException | None:
        return next((e for e in (self.pred, self.target_preds) if isinstance(e, BaseException)), None)

    def result(self, post: Post, version: str, now_ms: int) -> Result:
        entries = [target_entry(t.brand, tp, [m.to_dict() for m in t.mentions])
                   for t, tp in zip(self.targets, self.target_preds)]
        return Result.from_prediction(post, self.pred, version, now_ms, entries, self.overflow)


async def score(pool: Executor, predictor, posts: list[Post], max_targets: int, *, one_by_one: bool = True,
                tally: Callable[[bool], None] | None = None) -> list[Scored]:
    """Post-level and per-target predictions of ``predictor`` for ``posts``, in ``pool`` (the inference
    thread). A model that is not target-aware would answer each target with the post-level prediction, so
    for it ``predict_targets`` is not called."""
    if not posts:
        return []
    pairs = [(p.text, p.caption or "") for p in posts]
    post_level = [p[0] if isinstance(p, list) else p
                  for p in await infer(pool, predictor.predict, [[pair] for pair in pairs], one_by_one, tally)]
    targets = [post_targets(p, max_targets) for p in posts]
    if getattr(predictor, "target_aware", False):
        groups = [[t.model_input(post) for t in ts] if not isinstance(pred, BaseException) else []
                  for post, (ts, _), pred in zip(posts, targets, post_level)]
        per_target = await infer(pool, predictor.predict_targets, groups, one_by_one, tally)
    else:  # the post-level prediction is what predict_targets would answer for every target
        per_target = [pred if isinstance(pred, BaseException) else [pred] * len(ts)
                      for (ts, _), pred in zip(targets, post_level)]
    return [Scored(pred, ts, overflow, tp) for pred, (ts, overflow), tp in zip(post_level, targets, per_target)]


async def infer(pool: Executor, fn, groups: list[list], one_by_one: bool = True,
                tally: Callable[[bool], None] | None = None) -> list[list | BaseException]:
    """``fn`` over every item of every group in one call, in the inference thread; if that raises (or
    answers the wrong number of items), group by group (``one_by_one``; else every group gets the
    error), and a group that still fails gets its error. ``tally(failed)`` hears of every call."""
    loop = asyncio.get_running_loop()

    async def call(items: list) -> list:
        try:
            answers = await loop.run_in_executor(pool, fn, items)
            if len(answers) != len(items):
                raise RuntimeError(f"{len(answers)} predictions for {len(items)} inputs")
        except Exception:
            if tally is not None:
                tally(True)
            raise
        if tally is not None:
            tally(False)
        return list(answers)

    flat = [item for group in groups for item in group]
    if not flat:
        return [[] for _ in groups]
    try:
        answers = await call(flat)
    except Exception as e:  # noqa: BLE001 - find the post that breaks the batch, keep the rest
        if not one_by_one:
            return [e if group else [] for group in groups]
        log.warning("batch inference failed (%s: %s); retrying %d posts one by one",
                    type(e).__name__, e, sum(1 for g in groups if g))
        out: list[list | BaseException] = []
        for group in groups:
            try:
                out.append(await call(group) if group else [])
            except Exception as e1:  # noqa: BLE001
                out.append(e1)
        return out
    split, start = [], 0
    for group in groups:
        split.append(answers[start:start + len(group)])
        start += len(group)
    return split
