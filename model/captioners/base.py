"""What every captioner is: images in, one description string per image out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from PIL import Image


@runtime_checkable
class Captioner(Protocol):
    name: str  # e.g. "offline", "none", "vlm:<id>"; goes into caption caches and metrics

    def describe(self, images: list[Image.Image]) -> list[str]:
        """One string per image, in the same order."""
        ...


class NoCaptioner:
    """The text-only ablation: every image describes as the empty string."""

    name = "none"

    def describe(self, images: list[Image.Image]) -> list[str]:
        return ["" for _ in images]


def to_rgb(images: list[Image.Image]) -> list[Image.Image]:
    """What every captioner's models read: 3-channel RGB (palette, grey, RGBA and CMYK images converted)."""
    return [im if im.mode == "RGB" else im.convert("RGB") for im in images]
