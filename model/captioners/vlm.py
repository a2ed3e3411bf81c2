"""A real Hugging Face vision-language model as captioner (BLIP, GIT, Florence-2, LLaVA, Qwen2-VL, ...).

What differs between families (the prompt, how the processor is called, which tokens are the answer)
lives in one table, `vlm_families.FAMILIES`; this module loads the checkpoint and runs bounded, batched
generation. Remote code (a hub repository's own Python, e.g. microsoft/Florence-2-*) runs only with
`trust_remote_code=True` (the worker setting `captioner_trust_remote_code`); without it, a checkpoint
that ships its own code is refused rather than loaded into a native class it may not match.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

from affectstream.model.captioners.base import to_rgb
from affectstream.model.captioners.vlm_families import Family, decode, family_for, processor_inputs

AFFECT_PROMPT = ("Describe this image in one or two short sentences for sentiment analysis: the main "
                 "objects, people's facial expressions, the mood, and any text written in the image.")


@dataclass(frozen=True)
class VLMConfig:
    model: str  # hub id or local directory
    device: str = "auto"  # "auto": cuda when present, else cpu
    max_new_tokens: int = 48  # bounds every generation
    batch_size: int = 16
    prompt: str = AFFECT_PROMPT  # used only for chat (instruction-tuned) families
    # images are decoded reduced towards this longest side: above what processors resize to (BLIP 384,
    # Florence-2 768, SmolVLM/Idefics3 tiles up to 1456), so what the model reads is unchanged
    max_input_side: int = 1536
    trust_remote_code: bool = False  # run the checkpoint's own code (auto_map) when it ships some
    # a whole describe() call, loading included: generation stops at it (transformers' max_time) and the
    # call raises TimeoutError rather than return cut-short captions; None: bounded by max_new_tokens only
    time_limit_s: float | None = None


def _pick_device(device: str):
    from affectstream.model.device import pick_device  # imports torch: only once a VLM is configured

    return pick_device(device)


class VLMCaptioner:
    """Batched generation; bf16 (fp16 where bf16 is unsupported) on CUDA, fp32 on CPU. Loads lazily."""

    def __init__(self, config: VLMConfig):
        self.config = config
        self.name = f"vlm:{config.model}"
        self.max_input_side = config.max_input_side
        self._lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None
        self.family: Family | None = None  # known once loaded
        self._device = _pick_device(config.device)

    def describe(self, images: list[Image.Image]) -> list[str]:
        if not images:
            return []
        limit = self.config.time_limit_s
        deadline = None if limit is None else time.monotonic() + limit
        images = to_rgb(images)
        with self._lock:
            self._load()
            out: list[str] = []
            for start in range(0, len(images), self.config.batch_size):
                out.extend(self._generate(images[start:start + self.config.batch_size], deadline))
        return out

    def prepare(self, images: list[Image.Image]) -> Any:
        """The processor's batch for ``images`` as the family asks for it (on the model's device)."""
        import torch

        self._load()
        assert self.family is not None
        inputs = processor_inputs(self.family, self._processor, to_rgb(images), self.config.prompt)
        inputs = inputs.to(self._device)
        if "pixel_values" in inputs and self._model.dtype != torch.float32:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        return inputs

    def _generate(self, images: list[Image.Image], deadline: float | None) -> list[str]:
        import torch

        assert self.family is not None
        bounds: dict[str, Any] = {"max_new_tokens": self.config.max_new_tokens}
        if deadline is not None:
            bounds["max_time"] = _left(deadline, len(images))
        inputs = self.prepare(images)
        with torch.inference_mode():
            generated = self._model.generate(**inputs, do_sample=False, **bounds)
        if deadline is not None:
            _left(deadline, len(images))  # generation cut short by max_time is not a caption
        return decode(self.family, self._processor, generated, inputs)

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoConfig, AutoProcessor, PretrainedConfig

        from affectstream.model.device import has_bf16_units

        path, trust = self.config.model, self.config.trust_remote_code
        raw, _ = PretrainedConfig.get_config_dict(path)
        auto_map = raw.get("auto_map") or {}
        if auto_map and not trust:
            raise ValueError(
                f"{path} ships its own model code (auto_map: {', '.join(sorted(auto_map))}); it runs only with "
                "captioner_trust_remote_code (AFFECTSTREAM_CAPTIONER_TRUST_REMOTE_CODE=1). For Florence-2, the "
                "transformers-native ports (florence-community/Florence-2-*) need no remote code.")
        dtype = torch.float32
        if self._device.type == "cuda":
            dtype = torch.bfloat16 if has_bf16_units(self._device) else torch.float16
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            # Decoder-only models must be left-padded so every row's new tokens start at the same index.
            tokenizer.padding_side = "left"
        self.family = family_for(config.model_type, processor, bool(getattr(config, "is_encoder_decoder", False)))
        self._processor = processor
        self._model = _load_model(path, dtype, trust, auto_map).to(self._device).eval()


def _left(deadline: float, n_images: int) -> float:
    """Seconds left before ``deadline``; TimeoutError once none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"captioning {n_images} images ran past the captioner's time limit")
    return left


def _load_model(path: str, dtype: Any, trust_remote_code: bool, auto_map: dict) -> Any:
    """AutoModelForImageTextToText covers BLIP, GIT, Florence-2, LLaVA, SmolVLM... in transformers 5; some
    remote-code repositories register only as causal LMs (microsoft/Florence-2-*: AutoModelForCausalLM)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    candidates = [AutoModelForImageTextToText, AutoModelForCausalLM]
    named = [c for c in candidates if c.__name__ in auto_map]
    if trust_remote_code and named:
        return named[0].from_pretrained(path, dtype=dtype, trust_remote_code=True)
    try:
        return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except ValueError as first:  # config type not in that mapping
        try:
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        except ValueError:
            raise first from None
