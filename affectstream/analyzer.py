"""Trying a model in one line, from Python: ``Analyzer.from_pretrained(dir)(text, image=…, brands=[…])``.

The same path a streamed post takes, without Kafka or Redis: the image is fetched through the worker's
SSRF-guarded fetcher (``streaming.worker.image_refs``: http(s) only, public addresses only, size cap,
timeout) or read from a file, decoded by the safe decoder (``model.images``: pixel cap, allowed formats),
described by the model's own captioner (the one its config says it was trained with), and classified by
the serving predictor; brands are found in the text and the description by the worker's mention matcher
and made targets as the classify stage makes them (``streaming.worker.scoring.post_targets``).

    >>> from affectstream import Analyzer
    >>> analyzer = Analyzer.from_pretrained("models/default")
    >>> analysis = analyzer("Switched from acme to nimbus, so much better", brands=["acme", "nimbus"])
    >>> analysis.label, [(t.brand, t.label) for t in analysis.targets]

A model that is not target-aware (``models/default``) gives every brand the post-level label; the
analysis says so (``targets_per_brand`` is False).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image

from affectstream.model.captioners import Captioner, build_captioner
from affectstream.model.images import ImageError, ImageLimits, decode_image
from affectstream.model.predictor import BatchPredictor, Prediction
from affectstream.model.rationale import RationaleWord
from affectstream.streaming.worker.brands import ID_RE, parse_catalog
from affectstream.streaming.worker.image_refs import fetch_url, is_public_address
from affectstream.streaming.worker.mentions import MentionMatcher, detect
from affectstream.streaming.worker.schemas import InvalidPost, Post
from affectstream.streaming.worker.scoring import post_targets

ImageInput = Union[str, Path, bytes, Image.Image]
MAX_MENTIONS = 32
# a brand given as "@acme", "#acme" or "$ACME" is that handle, hashtag or cashtag; any other name is an alias
# (an alias matches inside "@acme" and "#acme" too: the brands file's word rules)
TERM_KINDS = {"@": "handles", "#": "hashtags", "$": "cashtags"}


class ImageUnavailable(ValueError):
    """The image given could not be fetched, read or decoded; ``reason`` is the pipeline's machine-readable
    reason (``url_not_allowed``, ``image_too_large``, ``not_an_image`` …)."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class TargetSentiment:
    brand: str                                      # the brand id (derived from the name given)
    name: str                                       # the name as given: what the model is told the target is
    label: str
    scores: dict[str, float]
    rationale: list[RationaleWord]
    mentions: list[dict[str, Any]]                  # where it is named: {"source", "alias", "span", …}; [] if only asserted


@dataclass(frozen=True)
class Analysis:
    label: str
    scores: dict[str, float]
    rationale: list[RationaleWord]                  # the top-K words, best first, with their source side
    caption: str | None                             # the image description the model read (None: no image)
    targets: list[TargetSentiment] = field(default_factory=list)
    targets_per_brand: bool = False                 # False: the model is post-level, each target has the post's label
    emotion: dict | None = None
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Analyzer:
    """A deployed model directory, its captioner and the image limits, ready to analyse posts one by one."""

    def __init__(self, predictor: BatchPredictor, captioner: Captioner, *, image_limits: ImageLimits = ImageLimits(),
                 fetch_timeout_s: float = 5.0, allow_private_urls: bool = False):
        self.predictor = predictor
        self.captioner = captioner
        self.image_limits = image_limits
        self.fetch_timeout_s = fetch_timeout_s
        self.allow_private_urls = allow_private_urls   # the SSRF guard's switch: only for trusted local setups

    @classmethod
    def from_pretrained(cls, model_dir: str | Path = "models/default", captioner: str | Captioner | None = None,
                        device: str = "auto", **options: Any) -> "Analyzer":
        """``captioner``: None for the one the model was trained with (its config), a spec
        (``offline``, ``none``, ``vlm:<id>``) or a captioner object."""
        predictor = BatchPredictor.from_directory(model_dir, device=device)
        if captioner is None or isinstance(captioner, str):
            captioner = build_captioner(captioner or predictor.config.captioner or "none", device=device)
        return cls(predictor, captioner, **options)

    @property
    def target_aware(self) -> bool:
        return self.predictor.target_aware

    def __call__(self, text: str, image: ImageInput | None = None, brands: list[str] | None = None) -> Analysis:
        caption = self.describe(image) if image is not None else None
        [prediction] = self.predictor.predict([(text or "", caption or "")])
        targets = self.targets(text or "", caption, brands or [], prediction)
        return Analysis(label=prediction.label, scores=prediction.scores, rationale=prediction.rationale,
                        caption=caption, targets=targets, targets_per_brand=self.target_aware,
                        emotion=prediction.emotion, model=self.predictor.version)

    # --- image -> description ---------------------------------------------------------------------------

    def describe(self, image: ImageInput) -> str:
        picture = image if isinstance(image, Image.Image) else self.decode(self.image_bytes(image))
        return self.captioner.describe([picture])[0]

    def image_bytes(self, image: str | Path | bytes) -> bytes:
        """A URL through the SSRF-guarded fetcher, a path read up to the byte cap, or the bytes themselves."""
        if isinstance(image, bytes):
            return image
        if isinstance(image, str) and re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", image):
            policy = (lambda ip: True) if self.allow_private_urls else is_public_address
            try:
                return fetch_url(image, self.image_limits.max_bytes, self.fetch_timeout_s, policy)
            except InvalidPost as e:
                raise ImageUnavailable(e.reason, str(e)) from None
        try:
            with open(image, "rb") as f:
                return f.read(self.image_limits.max_bytes + 1)   # one byte over: the decoder says image_too_large
        except OSError as e:
            raise ImageUnavailable("image_not_found", f"{image}: {e.strerror or type(e).__name__}") from None

    def decode(self, data: bytes) -> Image.Image:
        try:
            return decode_image(data, self.image_limits, getattr(self.captioner, "max_input_side", None))
        except ImageError as e:
            raise ImageUnavailable(e.reason, e.message) from None

    # --- brands -> per-target sentiment ---------------------------------------------------------------

    def targets(self, text: str, caption: str | None, names: list[str], prediction: Prediction) -> list[TargetSentiment]:
        """One entry per brand named in ``names``: mentioned ones in order of first mention, then the others
        (asserted, like a producer's ``brands``), as the classify stage orders them."""
        brands = brand_ids(names)
        if not brands:
            return []
        catalog = parse_catalog([{"id": bid, "name": name, TERM_KINDS.get(name[0], "aliases"): [name]}
                                 for bid, name in brands.items()], source="<brands argument>")
        mentions, _ = detect(MentionMatcher(catalog), text, caption, MAX_MENTIONS)
        post = Post(id="analyzer", text=text, image=None, created_at_ms=None, brands=list(brands),
                    caption=caption, mentions=mentions)
        targets, _ = post_targets(post, cap=len(brands))
        if self.target_aware:
            predictions = self.predictor.predict_targets([t.model_input(post) for t in targets])
        else:  # what predict_targets answers for a post-level model, without computing it again
            predictions = [prediction] * len(targets)
        return [TargetSentiment(brand=t.brand, name=brands[t.brand], label=p.label, scores=p.scores,
                                rationale=p.rationale, mentions=[m.to_dict() for m in t.mentions])
                for t, p in zip(targets, predictions)]


def brand_ids(names: list[str]) -> dict[str, str]:
    """Brand id -> name for the names given (repeats, in any case, dropped: one term names one brand): the id
    is the name lower-cased with other characters as ``-`` (``Acme Corp`` → ``acme-corp``, ``@acme`` →
    ``acme``), or ``brand-N`` (N: its place in ``names``) when that is taken or nothing of it is left."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for number, name in enumerate(names, start=1):
        name = " ".join(str(name).split())
        if not name or name.casefold() in seen:
            continue
        seen.add(name.casefold())
        slug = re.sub(r"[^a-z0-9_.-]+", "-", name.casefold()).strip("-_.")[:64]
        bid = slug if ID_RE.fullmatch(slug) and slug not in out and slug != "_all" else f"brand-{number}"
        out[bid] = name
    return out
