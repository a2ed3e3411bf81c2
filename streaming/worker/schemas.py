"""Message schemas: Post (input) and the machine-readable rejection reasons (the output is result.Result).

`parse_post` turns *any* bytes into a `Post` or raises `InvalidPost` with a `reason` from `REASONS`;
nothing else escapes. All JSON goes through orjson (docs/contracts.md).

Trust: the image side of a post (`caption`, `image_error`, `captioner`) and its brand mentions (`mentions`,
`mentions_overflow`) are written by the caption stage only. On `posts` (producers: untrusted) those fields
are *ignored*: parsed with ``trusted_enrichment=False`` they are dropped, whatever they hold, and never
forwarded, so a producer cannot choose what the classifier reads as the image description, plant an
`image_error` or a mention, nor claim the captioner that described it. On
`posts-enriched` (the internal topic: only the caption stage, or a tool that stands in for it such as the
bench, may write there) they are read with ``trusted_enrichment=True`` and checked: `caption` a string within
the text limit (`bad_caption`), `image_error` one of `IMAGE_ERROR_REASONS` (`bad_image_error`), `captioner`
a captioner id (`bad_captioner`: a short printable string such as "offline" or "vlm:<id>"), `mentions` a list
of at most ``max_mentions_per_post`` mention objects whose spans lie inside the text (source "text") or the
caption (source "image") and `mentions_overflow` a count >= 0 (`bad_mentions`).

`mentions` are the tracked brands the caption stage found in the post text and in its image's description
(``mentions.Mention``; JSON ``{"brand", "name", "alias", "source", "span": [start, end]}``), in order (text
first); `mentions_overflow` counts those past the cap. Both are left out of the JSON when empty / 0.

`captioner` is the id (``Captioner.name``) of the captioner that described the post's image; the caption
stage sets it on every post whose image it described, and the classify stage compares it with the model's
trained captioner (setting ``captioner_mismatch``: `captioner_mismatch` in the DLQ under ``reject``).
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import orjson

from affectstream.streaming.worker.brands import ID_RE as BRAND_ID_RE
from affectstream.streaming.worker.mentions import Mention, mention_from_dict
from affectstream.streaming.worker.redis_keys import ALL_BRANDS  # reserved aggregate bucket: not a valid brand
from affectstream.streaming.worker.settings import Settings

IMAGE_REASONS = frozenset({
    "image_empty", "image_too_large", "image_too_many_pixels", "image_format_not_allowed",
    "not_an_image", "image_truncated", "image_corrupt",
})
FETCH_REASONS = frozenset({
    "url_not_allowed", "url_scheme_not_allowed", "fetch_failed", "fetch_timeout",
    "path_not_allowed", "bad_base64", "image_not_found",
})
PARSE_REASONS = frozenset({
    "invalid_json", "invalid_utf8", "not_an_object", "missing_id", "bad_id", "id_too_long", "bad_text",
    "text_too_long", "empty_post", "bad_image_ref", "bad_created_at", "bad_brands", "bad_caption",
    "message_too_large", "too_deeply_nested", "bad_image_error", "bad_captioner", "bad_mentions",
})
STAGE_REASONS = frozenset({"caption_failed", "caption_timeout", "inference_failed", "captioner_mismatch"})
REASONS: frozenset[str] = PARSE_REASONS | IMAGE_REASONS | FETCH_REASONS | STAGE_REASONS
# what the caption stage may write as a post's image_error: why its image could not be described
IMAGE_ERROR_REASONS: frozenset[str] = IMAGE_REASONS | FETCH_REASONS | {"caption_failed", "caption_timeout"}

MAX_BRANDS = 32
MAX_BRAND_CHARS = 64
MAX_CAPTIONER_CHARS = 512  # "vlm:<hub id or local path>"
IMAGE_KINDS = ("url", "b64", "path")
# written by the caption stage only: dropped from producers' posts (module docstring)
ENRICHMENT_FIELDS = ("caption", "image_error", "captioner", "mentions", "mentions_overflow")
_MAX_EPOCH_MS = 253402300799999  # 9999-12-31T23:59:59.999Z


class InvalidPost(ValueError):
    """A rejected input. `reason` is one of REASONS; `post_id` is set when the id was readable."""

    def __init__(self, reason: str, message: str = "", post_id: str | None = None):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message
        self.post_id = post_id


@dataclass
class ImageRef:
    kind: Literal["url", "b64", "path"]
    value: str

    def to_dict(self) -> dict[str, str]:
        return {self.kind: self.value}


@dataclass
class Post:
    id: str
    text: str
    image: ImageRef | None
    created_at_ms: int | None
    brands: list[str]
    author: str | None = None
    lang: str | None = None
    meta: dict | None = None
    caption: str | None = None       # set by the caption stage only (see the module docstring)
    image_error: str | None = None   # set by the caption stage only: one of IMAGE_ERROR_REASONS
    captioner: str | None = None     # set by the caption stage only: the captioner that described the image
    mentions: list[Mention] = field(default_factory=list)  # set by the caption stage only: tracked brands named
    mentions_overflow: int = 0       # set by the caption stage only: mentions past max_mentions_per_post
    raw: dict = field(default_factory=dict, repr=False)  # original object: unknown fields pass through

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.raw)
        out.update({
            "id": self.id, "text": self.text,
            "image": self.image.to_dict() if self.image else None,
            "created_at": self.created_at_ms, "brands": list(self.brands),
        })
        for name in ("author", "lang", "meta", "caption", "image_error", "captioner"):
            value = getattr(self, name)
            if value is None:
                out.pop(name, None)
            else:
                out[name] = value
        if self.mentions:
            out["mentions"] = [m.to_dict() for m in self.mentions]
        else:
            out.pop("mentions", None)
        if self.mentions_overflow:
            out["mentions_overflow"] = self.mentions_overflow
        else:
            out.pop("mentions_overflow", None)
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def parse_post(data: bytes, settings: Settings, *, trusted_enrichment: bool = False) -> Post:
    """Bytes -> Post, or InvalidPost(reason). Never raises anything else.

    ``trusted_enrichment``: False (the default) for `posts` (producers' `caption` / `image_error` /
    `captioner` / `mentions` / `mentions_overflow` are dropped), True for `posts-enriched` (the caption
    stage's own fields, validated)."""
    try:
        return _parse_post(data, settings, trusted_enrichment)
    except InvalidPost:
        raise
    except Exception as e:  # noqa: BLE001 - untrusted input: any surprise is a bad message, never a crash
        raise InvalidPost("invalid_json", f"{type(e).__name__}: {e}") from None


def _parse_post(data: bytes, settings: Settings, trusted_enrichment: bool) -> Post:
    obj = _load_object(data, settings)
    if not trusted_enrichment:
        for name in ENRICHMENT_FIELDS:
            obj.pop(name, None)
    post_id = _parse_id(obj, settings)
    try:
        image = _parse_image(obj.get("image"))
        text = _parse_text(obj.get("text"), image, settings)
        caption = _parse_caption(obj.get("caption"), settings)
        return Post(
            id=post_id, text=text, image=image,
            created_at_ms=parse_created_at(obj.get("created_at")),
            brands=_parse_brands(obj.get("brands")),
            author=_opt_str(obj.get("author")), lang=_opt_str(obj.get("lang")),
            meta=obj["meta"] if isinstance(obj.get("meta"), dict) else None,
            caption=caption,
            image_error=_parse_image_error(obj.get("image_error")),
            captioner=_parse_captioner(obj.get("captioner")),
            mentions=_parse_mentions(obj.get("mentions"), text, caption, settings),
            mentions_overflow=_parse_mentions_overflow(obj.get("mentions_overflow")),
            raw=obj,
        )
    except InvalidPost as e:
        e.post_id = post_id
        raise


def _load_object(data: bytes, settings: Settings) -> dict:
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise InvalidPost("invalid_json", f"expected bytes, got {type(data).__name__}")
    if len(data) > settings.limits.max_message_bytes:
        raise InvalidPost("message_too_large", f"{len(data)} bytes > limit {settings.limits.max_message_bytes}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InvalidPost(_json_error_reason(data, str(e)), str(e)[:200]) from None
    if not isinstance(obj, dict):
        raise InvalidPost("not_an_object", f"top level is {type(obj).__name__}")
    return obj


def _json_error_reason(data: bytes, message: str) -> str:
    if "depth limit" in message or "recursion" in message:
        return "too_deeply_nested"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    return "invalid_json"


def _parse_id(obj: dict, settings: Settings) -> str:
    raw = obj.get("id")
    if raw is None:
        raise InvalidPost("missing_id", "no id")
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise InvalidPost("bad_id", f"id is {type(raw).__name__}")
    post_id = str(raw)
    if not post_id or not post_id.strip():
        raise InvalidPost("bad_id", "empty id")
    if len(post_id) > settings.limits.max_id_chars:
        raise InvalidPost("id_too_long", f"{len(post_id)} chars > {settings.limits.max_id_chars}")
    if any(unicodedata.category(c) == "Cc" for c in post_id):
        raise InvalidPost("bad_id", "control character in id")
    return post_id


def _parse_image(raw: Any) -> ImageRef | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) != 1:
        raise InvalidPost("bad_image_ref", 'image must be null or one of {"url"}, {"b64"}, {"path"}')
    (kind, value), = raw.items()
    if kind not in IMAGE_KINDS or not isinstance(value, str) or not value:
        raise InvalidPost("bad_image_ref", f"image.{kind} must be a non-empty string")
    return ImageRef(kind=kind, value=value)


def _parse_text(raw: Any, image: ImageRef | None, settings: Settings) -> str:
    if raw is None:
        raw = ""
    if not isinstance(raw, str):
        raise InvalidPost("bad_text", f"text is {type(raw).__name__}")
    if len(raw) > settings.limits.max_text_chars:
        raise InvalidPost("text_too_long", f"{len(raw)} chars > {settings.limits.max_text_chars}")
    if not raw.strip() and image is None:
        raise InvalidPost("empty_post", "no text and no image")
    return raw


def parse_created_at(raw: Any) -> int | None:
    """ISO-8601 string (naive = UTC) or epoch milliseconds -> epoch ms; None when absent."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise InvalidPost("bad_created_at", "created_at is a boolean")
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw) or not 0 <= raw <= _MAX_EPOCH_MS:
            raise InvalidPost("bad_created_at", f"epoch ms out of range: {raw}")
        return int(raw)
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise InvalidPost("bad_created_at", f"not ISO-8601: {raw[:64]!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        try:
            ms = int(dt.timestamp() * 1000)
        except (OverflowError, ValueError, OSError):
            raise InvalidPost("bad_created_at", f"out of range: {raw[:64]!r}") from None
        if not 0 <= ms <= _MAX_EPOCH_MS:
            raise InvalidPost("bad_created_at", f"out of range: {raw[:64]!r}")
        return ms
    raise InvalidPost("bad_created_at", f"created_at is {type(raw).__name__}")


def _parse_brands(raw: Any) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidPost("bad_brands", f"brands is {type(raw).__name__}")
    brands: list[str] = []
    for item in raw:
        if not isinstance(item, str):
            raise InvalidPost("bad_brands", f"brand is {type(item).__name__}")
        brand = item.strip().lower()
        if not brand or brand in brands:
            continue
        if len(brand) > MAX_BRAND_CHARS:
            raise InvalidPost("bad_brands", f"brand longer than {MAX_BRAND_CHARS} chars")
        if brand == ALL_BRANDS or any(unicodedata.category(c) in ("Cc", "Cs") for c in brand):
            raise InvalidPost("bad_brands", f"invalid brand name {brand[:64]!r}")
        brands.append(brand)
    if len(brands) > MAX_BRANDS:
        raise InvalidPost("bad_brands", f"{len(brands)} brands > {MAX_BRANDS}")
    return brands


def _parse_caption(raw: Any, settings: Settings) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > settings.limits.max_text_chars:
        raise InvalidPost("bad_caption", "caption must be a string within the text limit")
    return raw


def _parse_image_error(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or raw not in IMAGE_ERROR_REASONS:
        raise InvalidPost("bad_image_error", f"image_error is not a documented reason: {str(raw)[:64]!r}")
    return raw


def _parse_captioner(raw: Any) -> str | None:
    if raw is None:
        return None
    if (not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_CAPTIONER_CHARS
            or any(unicodedata.category(c) in ("Cc", "Cs") for c in raw)):
        raise InvalidPost("bad_captioner", f"captioner is not a captioner id: {str(raw)[:64]!r}")
    return raw


def _parse_mentions(raw: Any, text: str, caption: str | None, settings: Settings) -> list[Mention]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > settings.brands.max_mentions_per_post:
        raise InvalidPost("bad_mentions", f"mentions must be a list of at most {settings.brands.max_mentions_per_post}")
    mentions: list[Mention] = []
    for item in raw:
        try:
            mention = mention_from_dict(item)
        except ValueError as e:
            raise InvalidPost("bad_mentions", str(e)) from None
        within = text if mention.source == "text" else caption
        start, end = mention.span
        if within is None or not 0 <= start < end <= len(within):
            raise InvalidPost("bad_mentions", f"span {list(mention.span)} outside the post's {mention.source}")
        if not BRAND_ID_RE.fullmatch(mention.brand) or mention.brand == ALL_BRANDS:
            raise InvalidPost("bad_mentions", f"invalid brand id {mention.brand[:64]!r}")
        mentions.append(mention)
    return mentions


def _parse_mentions_overflow(raw: Any) -> int:
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise InvalidPost("bad_mentions", f"mentions_overflow must be a count >= 0, got {str(raw)[:64]!r}")
    return raw


def _opt_str(raw: Any) -> str | None:
    return raw if isinstance(raw, str) else None
