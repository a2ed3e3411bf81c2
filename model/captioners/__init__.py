"""Image -> language. `build_captioner(spec)` is the one entry point.

Specs: "offline" (default: packaged EfficientNet-Lite0 + RapidOCR + colours), "offline:no-ocr" (same,
without reading text), "none" (text-only ablation), "vlm:<hub id or local path>" (a real VLM).
"""

from __future__ import annotations

from affectstream.model.captioners.base import Captioner, NoCaptioner
from affectstream.model.captioners.offline import OfflineConfig, OfflineDescriber
from affectstream.model.captioners.vlm import VLMCaptioner, VLMConfig

__all__ = ["Captioner", "NoCaptioner", "OfflineConfig", "OfflineDescriber", "VLMCaptioner", "VLMConfig",
           "build_captioner"]

SPECS = ('"offline"', '"offline:no-ocr"', '"none"', '"vlm:<hub id or local path>"')


def build_captioner(spec: str, device: str = "auto", *, trust_remote_code: bool = False,
                    time_limit_s: float | None = None) -> Captioner:
    """Captioner for a spec string; models load on first use, so building is cheap.

    ``trust_remote_code`` and ``time_limit_s`` apply to ``vlm:`` only: run a checkpoint's own code (off
    unless set explicitly), and stop a ``describe`` call's generation at that many seconds."""
    spec = (spec or "").strip()
    if spec == "offline":
        return OfflineDescriber()
    if spec == "offline:no-ocr":
        describer = OfflineDescriber(OfflineConfig(ocr=False))
        describer.name = spec  # a different describer: caches and metrics must not mix the two
        return describer
    if spec == "none":
        return NoCaptioner()
    if spec.startswith("vlm:") and spec[4:].strip():
        return VLMCaptioner(VLMConfig(model=spec[4:].strip(), device=device, trust_remote_code=trust_remote_code,
                                      time_limit_s=time_limit_s))
    raise ValueError(f"unknown captioner spec {spec!r}; expected one of {', '.join(SPECS)}")
