"""How each vision-language family is asked for a caption and how its answer is read: one table.

A family is keyed by the checkpoint's ``config.model_type``. Three ways of asking:

- ``pixels``: captioning models (BLIP, GIT) caption from the image alone; no text goes in.
- ``task``: Florence-2 is steered by a task token; ``<CAPTION>`` is its plain caption task (its processor
  turns the token into the prompt the model was trained on). Remote-code and native ports alike.
- ``chat``: instruction-tuned models get the affect prompt through the processor's chat template, with
  the image placeholder in the user turn.

Decoder-only models return the prompt followed by the new tokens: ``echoes_prompt`` cuts at the prompt
length (rows are left-padded, so every row's new tokens start at the same index). Encoder-decoder models
(Florence-2) and pixel-only captioners return new tokens only (after special tokens, which decoding drops).
A model type not in the table is a chat model if its processor has a chat template, else pixel-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Family:
    ask: str                      # "pixels" | "task" | "chat"
    task: str = ""                # the task token, for ask == "task"
    echoes_prompt: bool = False   # generate() returns prompt + new tokens (decoder-only with a text prompt)
    nested_images: bool = False   # the processor takes one list of images per text (Idefics3, SmolVLM)


PIXELS = Family("pixels")
CHAT = Family("chat", echoes_prompt=True)

FAMILIES: dict[str, Family] = {
    # built tiny and run through `vlm:<folder>` in tests/test_vlm_families.py
    "blip": PIXELS,
    "git": PIXELS,
    "florence2": Family("task", task="<CAPTION>"),
    "llava": CHAT,
    # same calling convention, not built in the tests (see there for why)
    "llava_next": CHAT,
    "qwen2_vl": CHAT,
    "qwen2_5_vl": CHAT,
    "idefics3": Family("chat", echoes_prompt=True, nested_images=True),
    "smolvlm": Family("chat", echoes_prompt=True, nested_images=True),
}


def family_for(model_type: str, processor: Any, is_encoder_decoder: bool) -> Family:
    """The table's entry, else a guess from what the checkpoint ships (a chat template or not)."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if getattr(processor, "chat_template", None):
        return Family("chat", echoes_prompt=not is_encoder_decoder)
    return PIXELS


def processor_inputs(family: Family, processor: Any, images: list[Image.Image], prompt: str) -> Any:
    """The processor's batch for ``images``: pixel values, and the family's text when it takes one."""
    if family.ask == "pixels":
        return processor(images=images, return_tensors="pt")
    if family.ask == "task":
        text = family.task
    else:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch_images: list[Any] = [[im] for im in images] if family.nested_images else images
    return processor(images=batch_images, text=[text] * len(images), return_tensors="pt", padding=True)


def decode(family: Family, processor: Any, generated: Any, inputs: Any) -> list[str]:
    """One clean string per row: the new tokens only, special tokens dropped, whitespace collapsed."""
    if family.echoes_prompt and "input_ids" in inputs:
        generated = generated[:, inputs["input_ids"].shape[1]:]  # (batch, new tokens)
    texts = processor.batch_decode(generated, skip_special_tokens=True)
    return [" ".join(t.split()) for t in texts]
