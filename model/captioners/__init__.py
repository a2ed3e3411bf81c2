"""Image -> language. `build_captioner(spec)` is the one entry point.

Specs: "offline[@version][:parts]" (packaged EfficientNet-Lite0 + face expressions + RapidOCR + colours;
"offline" is version 1, without faces; "offline@2" has them; "offline@2:no-ocr" or "offline@2:faces" switch
parts: offline_spec.py), "none" (text-only ablation), "vlm:<hub id or local path>" (a real VLM).
"""

from __future__ import annotations

from affectstream.model.captioners.base import Captioner, NoCaptioner, PartedCaptioner
from affectstream.model.captioners.offline import OfflineConfig, OfflineDescriber
from affectstream.model.captioners.offline_spec import parse_offline_spec
from affectstream.model.captioners.vlm import VLMCaptioner, VLMConfig

__all__ = ["Captioner", "NoCaptioner", "OfflineConfig", "OfflineDescriber", "PartedCaptioner", "VLMCaptioner",
           "VLMConfig", "build_captioner"]

SPECS = ('"offline"', '"offline:no-ocr"', '"offline@2"', '"offline@2:no-<part>,..."', '"offline@2:<part>,..."',
         '"none"', '"vlm:<hub id or local path>"')


def build_captioner(spec: str, device: str = "auto", *, trust_remote_code: bool = False,
                    time_limit_s: float | None = None) -> Captioner:
    """Captioner for a spec string; models load on first use, so building is cheap.

    ``trust_remote_code`` and ``time_limit_s`` apply to ``vlm:`` only: run a checkpoint's own code (off
    unless set explicitly), and stop a ``describe`` call's generation at that many seconds."""
    spec = (spec or "").strip()
    if spec.startswith("offline"):
        try:
            return OfflineDescriber(OfflineConfig.of(parse_offline_spec(spec)))
        except ValueError as e:
            raise ValueError(f"{e}; expected one of {', '.join(SPECS)}") from None
    if spec == "none":
        return NoCaptioner()
    if spec.startswith("vlm:") and spec[4:].strip():
        return VLMCaptioner(VLMConfig(model=spec[4:].strip(), device=device, trust_remote_code=trust_remote_code,
                                      time_limit_s=time_limit_s))
    raise ValueError(f"unknown captioner spec {spec!r}; expected one of {', '.join(SPECS)}")
