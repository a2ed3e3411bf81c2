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


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is present, else "cpu"; anything else passes through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
