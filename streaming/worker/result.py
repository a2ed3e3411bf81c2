"""The Result (docs/contracts.md: Result), built once by the classify stage and serialised once for every sink.

Brand-level sentiment: ``targets`` holds one entry per brand the post is about (its mentions' brands in order
of first mention, then producer-asserted brands without a mention), each with the model's label, scores and
rationale *toward that brand* and the mentions that made it a target::

    {"brand": "acme", "label": "negative", "scores": {...}, "rationale": [{"text", "score", "source"}],
     "mentions": [{"brand", "name", "alias", "source", "span": [start, end]}]}

``label``/``scores``/``rationale`` at the top stay the post-level prediction; ``brands`` lists the targets'
brand ids; ``targets_overflow`` counts the targets left out by ``settings.brands.max_targets_per_post``.
``bucket_labels`` says which label counts in which brand-minute bucket (the Redis sink and the monitor)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import orjson

from affectstream.streaming.worker.redis_keys import ALL_BRANDS, counted_brands, event_ms

if TYPE_CHECKING:
    from affectstream.streaming.worker.schemas import Post


@dataclass(frozen=True)
class Result:
    id: str
    label: str
    scores: dict[str, float]
    emotion: dict[str, Any] | None = None          # {"label", "scores"} when the model has an emotion head
    rationale: list[dict[str, Any]] = field(default_factory=list)  # [{"text", "score", "source"}], best first
    caption: str | None = None
    image_error: str | None = None
    brands: list[str] = field(default_factory=list)  # the targets' brand ids, in target order
    targets: list[dict[str, Any]] = field(default_factory=list)  # per brand: {"brand", "label", "scores", …}
    targets_overflow: int = 0                      # targets left out (``settings.brands.max_targets_per_post``)
    model: str = ""
    created_at: int | None = None                  # epoch ms from the post, when it had one
    processed_at: int = 0                          # epoch ms
    latency_ms: int | None = None

    @classmethod
    def from_prediction(cls, post: "Post", prediction: Any, model_version: str, processed_at_ms: int,
                        targets: list[dict[str, Any]] | None = None, targets_overflow: int = 0) -> "Result":
        """The result for a parsed post; ``prediction`` is the predictor's ``Prediction`` (or its ``to_dict()``),
        ``targets`` the per-brand entries (``target_entry``); without them ``brands`` are the post's own."""
        pred = _as_dict(prediction)
        created = post.created_at_ms
        brands = [t["brand"] for t in targets] if targets is not None else list(post.brands)
        return cls(
            id=post.id, label=pred["label"], scores=pred["scores"], emotion=pred.get("emotion"),
            rationale=pred.get("rationale") or [], caption=post.caption, image_error=post.image_error,
            brands=brands, targets=list(targets or ()), targets_overflow=targets_overflow, model=model_version,
            created_at=created, processed_at=processed_at_ms,
            latency_ms=processed_at_ms - created if created is not None else None,
        )

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses natively, in field order

    def to_dict(self) -> dict[str, Any]:
        return orjson.loads(self.to_json())

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "Result":
        """From a decoded Result JSON; unknown fields (a newer producer) are ignored, and a result from before
        targets (or with malformed ones) reads as having none."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in obj.items() if k in names}
        if not isinstance(values.get("targets", []), list):
            values["targets"] = []
        if type(values.get("targets_overflow", 0)) is not int:
            values["targets_overflow"] = 0
        return cls(**values)

    @classmethod
    def from_json(cls, data: bytes | str) -> "Result":
        return cls.from_dict(orjson.loads(data))

    @property
    def event_ms(self) -> int:
        return event_ms(self.created_at, self.processed_at)

    @property
    def counted_brands(self) -> list[str]:
        """The result's brand buckets and ``_all`` (without the untargeted bucket: see ``bucket_labels``)."""
        return counted_brands(self.brands)

    def bucket_labels(self, untargeted_brand: str = "") -> dict[str, str]:
        """Brand bucket -> the label counted there: each target's own label; a listed brand without a
        target entry (a result from before targets) the post-level label; ``untargeted_brand`` (when set)
        the post-level label of a post with no brand; ``_all`` always the post-level label."""
        # (a plain dict is checked before the Mapping ABC: the sink asks this of every result)
        own = {t["brand"]: t["label"] for t in self.targets
               if (type(t) is dict or isinstance(t, Mapping)) and isinstance(t.get("brand"), str)
               and isinstance(t.get("label"), str)}
        brands = counted_brands([*own, *self.brands], untargeted_brand)
        return {brand: own.get(brand, self.label) if brand != ALL_BRANDS else self.label for brand in brands}


def target_entry(brand: str, prediction: Any, mentions: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``targets`` entry: the prediction toward ``brand`` and the mentions (dicts) that made it a target."""
    pred = _as_dict(prediction)
    return {"brand": brand, "label": pred["label"], "scores": pred["scores"],
            "rationale": pred.get("rationale") or [], "mentions": mentions}


def _as_dict(prediction: Any) -> Mapping[str, Any]:
    return prediction if isinstance(prediction, Mapping) else prediction.to_dict()
