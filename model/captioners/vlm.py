"""A real Hugging Face vision-language model as captioner (BLIP, GIT, Florence-2, SmolVLM, ...).

Plain captioners (BLIP, GIT) caption from pixels alone. Instruction-tuned models (those whose processor
has a chat template) get a short prompt asking for the things that carry affect.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from PIL import Image

from affectstream.model.captioners.base import to_rgb

AFFECT_PROMPT = ("Describe this image in one or two short sentences for sentiment analysis: the main "
                 "objects, people's facial expressions, the mood, and any text written in the image.")


@dataclass(frozen=True)
class VLMConfig:
    model: str  # hub id or local directory
    device: str = "auto"  # "auto": cuda when present, else cpu
    max_new_tokens: int = 48
    batch_size: int = 16
    prompt: str = AFFECT_PROMPT  # used only for chat (instruction-tuned) models
    # images are decoded reduced towards this longest side: above what processors resize to (BLIP 384,
    # Florence-2 768, SmolVLM/Idefics3 tiles up to 1456), so what the model reads is unchanged
    max_input_side: int = 1536


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
        self._device = _pick_device(config.device)

    def describe(self, images: list[Image.Image]) -> list[str]:
        if not images:
            return []
        images = to_rgb(images)
        with self._lock:
            self._load()
            out: list[str] = []
            for start in range(0, len(images), self.config.batch_size):
                out.extend(self._generate(images[start:start + self.config.batch_size]))
        return out

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoProcessor

        from affectstream.model.device import has_bf16_units

        dtype = torch.float32
        if self._device.type == "cuda":
            dtype = torch.bfloat16 if has_bf16_units(self._device) else torch.float16
        self._processor = AutoProcessor.from_pretrained(self.config.model)
        tokenizer = getattr(self._processor, "tokenizer", None)
        if tokenizer is not None:
            # Decoder-only models must be left-padded so every row's new tokens start at the same index.
            tokenizer.padding_side = "left"
            if not getattr(self._processor, "chat_template", None) and getattr(tokenizer, "chat_template", None):
                # A saved chat_template.jinja lands on the tokenizer when the processor class takes no
                # template (BLIP); the directory still asks for chat prompts.
                self._processor.chat_template = tokenizer.chat_template
        self._model = _load_model(self.config.model, dtype).to(self._device).eval()

    def _is_chat(self) -> bool:
        return bool(getattr(self._processor, "chat_template", None))

    def _generate(self, images: list[Image.Image]) -> list[str]:
        import torch

        if self._is_chat():
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.config.prompt}]}]
            prompt = self._processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = self._processor(images=images, text=[prompt] * len(images),
                                     return_tensors="pt", padding=True)
        else:
            inputs = self._processor(images=images, return_tensors="pt")
        inputs = inputs.to(self._device)
        if "pixel_values" in inputs and self._model.dtype != torch.float32:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        with torch.inference_mode():
            generated = self._model.generate(**inputs, max_new_tokens=self.config.max_new_tokens, do_sample=False)
        if "input_ids" in inputs:
            generated = _new_tokens(generated, inputs["input_ids"])
        texts = self._processor.batch_decode(generated, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]


def _new_tokens(generated: Any, prompt_ids: Any) -> Any:
    """Drop the echoed prompt. Decoder-only models echo it whole, BLIP echoes it less its final [SEP],
    encoder-decoder models (Florence-2) echo nothing: compare rather than assume."""
    for echoed in (prompt_ids.shape[1], prompt_ids.shape[1] - 1):
        if 0 < echoed < generated.shape[1] and bool((generated[:, :echoed] == prompt_ids[:, :echoed]).all()):
            return generated[:, echoed:]
    return generated


def _load_model(path: str, dtype: Any) -> Any:
    """AutoModelForImageTextToText covers BLIP, GIT, Florence-2, SmolVLM, LLaVA... in transformers 5."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    except ValueError as first:  # config type not in that mapping: some captioners register as causal LMs
        try:
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except ValueError:
            raise first from None
