"""The Result (DESIGN.md: Result), built once by the classify stage and serialised once for every sink."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Mapping

import orjson

from affectstream.streaming.worker.redis_keys import counted_brands, event_ms

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
    brands: list[str] = field(default_factory=list)
    model: str = ""
    created_at: int | None = None                  # epoch ms from the post, when it had one
    processed_at: int = 0                          # epoch ms
    latency_ms: int | None = None

    @classmethod
    def from_prediction(cls, post: "Post", prediction: Any, model_version: str, processed_at_ms: int) -> "Result":
        """The result for a parsed post; ``prediction`` is the predictor's ``Prediction`` (or its ``to_dict()``)."""
        pred: Mapping[str, Any] = prediction if isinstance(prediction, Mapping) else prediction.to_dict()
        created = post.created_at_ms
        return cls(
            id=post.id, label=pred["label"], scores=pred["scores"], emotion=pred.get("emotion"),
            rationale=pred.get("rationale") or [], caption=post.caption, image_error=post.image_error,
            brands=list(post.brands), model=model_version, created_at=created, processed_at=processed_at_ms,
            latency_ms=processed_at_ms - created if created is not None else None,
        )

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses natively, in field order

    def to_dict(self) -> dict[str, Any]:
        return orjson.loads(self.to_json())

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "Result":
        """From a decoded Result JSON; unknown fields (a newer producer) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})

    @classmethod
    def from_json(cls, data: bytes | str) -> "Result":
        return cls.from_dict(orjson.loads(data))

    @property
    def event_ms(self) -> int:
        return event_ms(self.created_at, self.processed_at)

    @property
    def counted_brands(self) -> list[str]:
        return counted_brands(self.brands)
