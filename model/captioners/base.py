"""What every captioner is: images in, one description string per image out."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from PIL import Image


@runtime_checkable
class Captioner(Protocol):
    name: str  # e.g. "offline", "none", "vlm:<id>"; goes into caption caches and metrics
    # The longest image side the captioner's models read (after their own resizing); callers may decode
    # images reduced towards it (model.images.decode_image max_side). None: full size.
    max_input_side: int | None

    def describe(self, images: list[Image.Image]) -> list[str]:
        """One string per image, in the same order."""
        ...


@runtime_checkable
class PartedCaptioner(Captioner, Protocol):
    """A captioner whose description joins parts computed (and so cacheable) apart: a cache keyed by
    (part, part version, image) recomputes only the parts it lacks when parts are added or switched."""

    parts: tuple[str, ...]
    part_versions: dict[str, int]

    def describe_parts(self, images: list[Image.Image], parts: tuple[str, ...]) -> dict[str, list[Any]]:
        """part -> one JSON-serialisable value per image, in the same order."""
        ...

    def compose(self, values: dict[str, Any]) -> str:
        """The description from one image's part values (every part of ``parts``)."""
        ...


class NoCaptioner:
    """The text-only ablation: every image describes as the empty string."""

    name = "none"
    max_input_side = 64  # reads no pixels; a small decode still proves the image is one

    def describe(self, images: list[Image.Image]) -> list[str]:
        return ["" for _ in images]


def to_rgb(images: list[Image.Image]) -> list[Image.Image]:
    """What every captioner's models read: 3-channel RGB (palette, grey, RGBA and CMYK images converted)."""
    return [im if im.mode == "RGB" else im.convert("RGB") for im in images]


def thumbnail(image: Image.Image, side: int) -> Image.Image:
    """``image`` reduced to fit ``side`` x ``side`` (bilinear), or itself when it already fits."""
    if max(image.size) <= side:
        return image
    small = image.copy()
    small.thumbnail((side, side), Image.Resampling.BILINEAR)
    return small
