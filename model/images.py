"""Safe image decoding, shared by training and streaming.

Every input is untrusted: `decode_image` turns any bytes into a fully loaded RGB image or raises
`ImageError` with a machine-readable `reason` (used in the DLQ, metrics and tests alike). Nothing else
escapes, whatever Pillow does with the bytes.

Memory: `decode_image(..., max_side=N)` decodes for a model that reads at most N pixels a side: JPEGs are
decoded at a reduced scale by the decoder itself (`draft`), other formats are box-reduced (`reduce`) right
after decoding, to a longest side in [N, 2N). `decoded_pixels` tells, from the header only, how many
pixels decoding will allocate at its peak, so a caller can bound what a batch decodes at once.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

from PIL import Image, ImageOps, UnidentifiedImageError

# Phones write multi-picture JPEGs that Pillow reports as "MPO"; they are JPEGs to a user.
_FORMAT_ALIASES: dict[str, str] = {"MPO": "JPEG"}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # width*height, checked from the header before decoding
    formats: frozenset[str] = field(default_factory=lambda: frozenset({"JPEG", "PNG", "WEBP", "GIF"}))


class ImageError(ValueError):
    """A rejected image. `reason` is one of: image_empty, image_too_large, image_too_many_pixels,
    image_format_not_allowed, not_an_image, image_truncated, image_corrupt."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def image_sha256(data: bytes) -> str:
    """Hex digest of the raw bytes: the caption cache key (a reposted image is captioned once)."""
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), max_side: int | None = None) -> Image.Image:
    """Bytes -> RGB image, fully loaded; first frame of animations; EXIF orientation applied; with
    ``max_side``, reduced to a longest side under 2 x max_side (never below max_side)."""
    img = _open_checked(_checked_bytes(data, limits), limits)
    try:
        if max_side:
            img.draft(None, (max_side, max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale; others: no-op
        img.load()  # decodes the first frame only; later frames are never touched
        img = _upright(_reduced(img, max_side))
        return _reduced(_to_rgb(img), max_side)
    except ImageError:
        raise
    except (OSError, EOFError, SyntaxError) as e:
        reason = "image_truncated" if "truncat" in str(e).lower() else "image_corrupt"
        raise ImageError(reason, str(e) or type(e).__name__) from e
    except Exception as e:  # noqa: BLE001 - untrusted input: any decoder failure is a bad image
        raise ImageError("image_corrupt", f"{type(e).__name__}: {e}") from e


def decoded_pixels(data: bytes, limits: ImageLimits = ImageLimits(), max_side: int | None = None) -> int:
    """Pixels ``decode_image(data, limits, max_side)`` decodes at its peak, from the header only (JPEG's
    reduced-scale decoding counted). Raises ImageError as decode_image would for a bad header."""
    img = _open_checked(_checked_bytes(data, limits), limits)
    try:
        if max_side:
            img.draft(None, (max_side, max_side))
        width, height = img.size
        return width * height
    except Exception as e:  # noqa: BLE001 - untrusted input: any decoder failure is a bad image
        raise ImageError("image_corrupt", f"{type(e).__name__}: {e}") from e


def _checked_bytes(data: bytes, limits: ImageLimits) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError("not_an_image", f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageError("image_empty", "no image bytes")
    if len(data) > limits.max_bytes:
        raise ImageError("image_too_large", f"{len(data)} bytes > limit {limits.max_bytes}")
    return data


def _reduced(img: Image.Image, max_side: int | None) -> Image.Image:
    """Box-reduce by a whole factor so the longest side stays >= max_side; modes `reduce` does not take
    (palette, 1-bit) are left for after the RGB conversion."""
    factor = max(img.size) // max_side if max_side else 1
    if factor < 2:
        return img
    try:
        return img.reduce(factor)
    except ValueError:
        return img


def _open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """Parse only the header (no pixel decoding) and enforce format and pixel limits on it."""
    # Only the allowed decoders ever see the bytes; others are consulted below just to name the format.
    Image.init()
    allowed = sorted(f for f in limits.formats if f in Image.OPEN)  # Pillow KeyErrors on unknown names
    try:
        img = _open(data, allowed)
    except UnidentifiedImageError:
        fmt = _identify(data)
        if fmt is None:
            raise ImageError("not_an_image", "bytes are not a recognised image") from None
        if fmt in limits.formats:  # an allowed format whose header its own decoder rejected
            raise ImageError("image_corrupt", f"unreadable {fmt} header") from None
        raise ImageError("image_format_not_allowed", f"{fmt} is not one of {sorted(limits.formats)}") from None
    fmt = _format_of(img)
    if fmt not in limits.formats:  # e.g. MPO when JPEG is not allowed: the JPEG decoder opens both
        raise ImageError("image_format_not_allowed", f"{fmt} is not one of {sorted(limits.formats)}")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError("image_corrupt", f"invalid size {width}x{height}")
    if width * height > limits.max_pixels:
        raise ImageError("image_too_many_pixels", f"{width}x{height} > limit {limits.max_pixels} pixels")
    return img


def _open(data: bytes, formats: list[str] | None) -> Image.Image:
    """Image.open mapped onto ImageError, except UnidentifiedImageError which callers interpret."""
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's global limit fired first (or its warning is configured as an error): same verdict.
        raise ImageError("image_too_many_pixels", str(e)) from e
    except (OSError, EOFError, SyntaxError) as e:
        reason = "image_truncated" if "truncat" in str(e).lower() else "image_corrupt"
        raise ImageError(reason, str(e) or type(e).__name__) from e
    except Exception as e:  # noqa: BLE001 - header parsers raise assorted errors on hostile input
        raise ImageError("image_corrupt", f"{type(e).__name__}: {e}") from e


def _identify(data: bytes) -> str | None:
    """Name the format of bytes the allowed decoders rejected, reading the header only."""
    try:
        img = _open(data, None)
    except (UnidentifiedImageError, ImageError):
        return None
    return _format_of(img) or None


def _format_of(img: Image.Image) -> str:
    fmt = img.format or ""
    return _FORMAT_ALIASES.get(fmt, fmt)


def _upright(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a malformed EXIF block is ignored rather than failing the image."""
    try:
        return ImageOps.exif_transpose(img, in_place=True) or img  # without in_place: a copy, even upright
    except Exception:  # noqa: BLE001 - EXIF is metadata; the pixels are still good
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency flattened onto white (memes are drawn on white; black would hide text)."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit/float greyscale: scale to 8 bits first; a direct convert clips to white.
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    return img.convert("RGB") if img.mode != "RGB" else img
