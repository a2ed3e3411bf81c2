"""`vlm:<folder>` on tiny random checkpoints of each family: BLIP, GIT, Florence-2 (native), LLaVA.

Each checkpoint is built from a config and saved with its processor (tests/tiny_vlms.py), then loaded the
way a worker loads it: `build_captioner("vlm:<folder>")`. Random weights write random words; what is
checked is the plumbing: every image gets a string, the family's prompt or task token goes in, only new
tokens come out, remote code runs only when trusted, and time limits stop generation.

Not built here: SmolVLM (`smolvlm`; its processor needs `num2words`, not installed) and Idefics3
(SmolVLM-Instruct; transformers 5.17 resolves its PIL image processor to a placeholder without
torchvision). Both are in the family table with the calling convention of their processors.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from affectstream.model.captioners import build_captioner
from affectstream.model.captioners.vlm import AFFECT_PROMPT, VLMCaptioner, VLMConfig
from affectstream.model.captioners.vlm_families import FAMILIES
from tests.tiny_vlms import BUILDERS, tiny_blip

FLORENCE_CAPTION_PROMPT = "What does the image describe?"  # what Florence2Processor makes of <CAPTION>


def _images() -> list[Image.Image]:
    """Three different images, sizes and modes: a batch the processors must resize and convert."""
    return [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("L", (20, 60), 90),
            Image.new("RGBA", (40, 40), (20, 60, 220, 255))]


def _short(captioner: VLMCaptioner) -> VLMCaptioner:
    """Random weights seldom write an end token: short answers keep the file fast."""
    captioner.config = dataclasses.replace(captioner.config, max_new_tokens=8)
    return captioner


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlms")
    return {family: build(root / family) for family, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def captioners(checkpoints: dict[str, Path]) -> dict[str, VLMCaptioner]:
    out = {}
    for family, path in checkpoints.items():
        captioner = build_captioner(f"vlm:{path}", device="cpu")
        assert isinstance(captioner, VLMCaptioner) and captioner.config.max_new_tokens == 48
        out[family] = _short(captioner)
    return out


@pytest.mark.parametrize("family", list(BUILDERS))
def test_every_image_of_a_batch_gets_a_string(captioners: dict[str, VLMCaptioner], checkpoints: dict[str, Path],
                                              family: str) -> None:
    captioner = captioners[family]
    assert captioner.name == f"vlm:{checkpoints[family]}"
    out = captioner.describe(_images())
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    assert all(s == " ".join(s.split()) for s in out)  # one clean line each
    assert captioner.family is FAMILIES[family]
    assert captioner.describe([]) == []


@pytest.mark.parametrize("family", list(BUILDERS))
def test_batched_captions_equal_one_at_a_time(captioners: dict[str, VLMCaptioner], family: str) -> None:
    captioner = captioners[family]
    images = _images()
    assert captioner.describe(images) == [captioner.describe([im])[0] for im in images]


@pytest.mark.parametrize("family", ["blip", "git"])
def test_captioning_models_read_pixels_only(captioners: dict[str, VLMCaptioner], family: str) -> None:
    inputs = captioners[family].prepare(_images())
    assert set(inputs) == {"pixel_values"}
    assert inputs["pixel_values"].shape[0] == 3


def test_florence2_gets_the_caption_task_token(captioners: dict[str, VLMCaptioner]) -> None:
    captioner = captioners["florence2"]
    assert captioner.family.task == "<CAPTION>"
    inputs = captioner.prepare(_images())
    tokenizer = captioner._processor.tokenizer
    for row in inputs["input_ids"]:
        text = tokenizer.decode(row, skip_special_tokens=False)
        # image tokens, then <s>task prompt</s>: the processor expanded <CAPTION>, not an empty prefix
        assert text.replace("<image>", "") == f"<s>{FLORENCE_CAPTION_PROMPT}</s>"
        assert (row == captioner._model.config.image_token_id).sum() == captioner._processor.num_image_tokens
    # an encoder-decoder answers with new tokens only: the prompt is not echoed back
    assert all(FLORENCE_CAPTION_PROMPT not in s for s in captioner.describe(_images()))


def test_chat_model_gets_the_affect_prompt_and_returns_only_new_tokens(checkpoints: dict[str, Path]) -> None:
    prompt = "describe the mood"
    captioner = VLMCaptioner(VLMConfig(model=str(checkpoints["llava"]), device="cpu", prompt=prompt,
                                       max_new_tokens=4))
    inputs = captioner.prepare(_images())
    tokenizer = captioner._processor.tokenizer
    for row in inputs["input_ids"]:
        text = tokenizer.decode(row, skip_special_tokens=True)
        assert text.startswith("USER: ") and text.endswith(f"\n{prompt} ASSISTANT:")
        assert (row == captioner._model.config.image_token_index).sum() == 16  # (32 / 8)^2 patches
    out = captioner.describe(_images())
    assert len(out) == 3
    for s in out:
        assert prompt not in s and "ASSISTANT" not in s and "USER" not in s
        assert len(tokenizer(s, add_special_tokens=False)["input_ids"]) <= 4 + 2  # max_new_tokens, re-split slack


def test_default_prompt_is_the_affect_prompt(captioners: dict[str, VLMCaptioner]) -> None:
    captioner = captioners["llava"]
    row = captioner.prepare(_images()[:1])["input_ids"][0]
    assert AFFECT_PROMPT in captioner._processor.tokenizer.decode(row, skip_special_tokens=True)


def test_generation_is_bounded_by_max_new_tokens(checkpoints: dict[str, Path]) -> None:
    captioner = VLMCaptioner(VLMConfig(model=str(checkpoints["git"]), device="cpu", max_new_tokens=3))
    out = captioner.describe(_images())
    tokenizer = captioner._processor.tokenizer
    assert all(len(tokenizer(s, add_special_tokens=False)["input_ids"]) <= 3 for s in out)


def test_a_call_past_its_time_limit_raises_instead_of_returning_cut_captions(checkpoints: dict[str, Path]) -> None:
    spec = f"vlm:{checkpoints['blip']}"
    hurried = build_captioner(spec, device="cpu", time_limit_s=1e-6)
    with pytest.raises(TimeoutError, match="time limit"):
        hurried.describe(_images())
    relaxed = _short(build_captioner(spec, device="cpu", time_limit_s=60.0))
    assert len(relaxed.describe(_images())) == 3


def test_batches_larger_than_batch_size_are_chunked(checkpoints: dict[str, Path]) -> None:
    captioner = VLMCaptioner(VLMConfig(model=str(checkpoints["florence2"]), device="cpu", batch_size=2,
                                       max_new_tokens=4))
    assert len(captioner.describe(_images() * 2)) == 6


REMOTE_CODE = textwrap.dedent("""
    from transformers import BlipConfig, BlipForConditionalGeneration

    class RemoteBlipConfig(BlipConfig):
        model_type = "remote_blip"

    class RemoteBlipForCaptioning(BlipForConditionalGeneration):
        config_class = RemoteBlipConfig
""")


@pytest.fixture(scope="module")
def remote_code_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BLIP whose config points at model code shipped in the folder, as hub remote-code repos do."""
    path = tiny_blip(tmp_path_factory.mktemp("remote") / "remote_blip")
    (path / "remote_blip.py").write_text(REMOTE_CODE)
    config = json.loads((path / "config.json").read_text())
    auto_map = {"AutoConfig": "remote_blip.RemoteBlipConfig",
                "AutoModelForImageTextToText": "remote_blip.RemoteBlipForCaptioning"}
    config.update(model_type="remote_blip", auto_map=auto_map)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_remote_code_is_refused_by_default(remote_code_checkpoint: Path) -> None:
    captioner = build_captioner(f"vlm:{remote_code_checkpoint}", device="cpu")
    assert isinstance(captioner, VLMCaptioner) and captioner.config.trust_remote_code is False
    with pytest.raises(ValueError, match="captioner_trust_remote_code"):
        captioner.describe(_images())


def test_remote_code_runs_when_trusted(remote_code_checkpoint: Path) -> None:
    captioner = _short(build_captioner(f"vlm:{remote_code_checkpoint}", device="cpu", trust_remote_code=True))
    out = captioner.describe(_images())
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    assert type(captioner._model).__name__ == "RemoteBlipForCaptioning"  # the folder's code, not BLIP's
    assert captioner.family.ask == "pixels"  # a type not in the table, with no chat template
