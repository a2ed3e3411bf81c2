"""Captioners: the offline describer on Pillow-made images, the text-only ablation, the spec strings."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from affectstream.model.captioners import Captioner, OfflineDescriber, build_captioner
from affectstream.model.captioners.offline import clean_text, scene_attributes

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
# objects: a, b. [text in image: "...".] [scene: x, y.]
DESCRIPTION = re.compile(r'^objects: [^."]+\.( text in image: "[^"]+"\.)?( scene: [^."]+\.)?$')


def _meme(text: str) -> Image.Image:
    """Large dark capitals on white, with a margin all round (clipped letters are not the test)."""
    font = ImageFont.truetype(FONT, 52)
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("RGB", (right - left + 80, 3 * (bottom - top) + 80), "white")
    ImageDraw.Draw(img).text((40 - left, bottom - top + 40 - top), text, font=font, fill="black")
    return img


def _photo() -> Image.Image:
    """Photo-like: a warm gradient with noise, a red disc and a blue band; no text."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(40, 220, 480)[None, :, None] * np.array([1.0, 0.7, 0.4])
    pixels = (ramp + rng.normal(0, 12, (360, 480, 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    draw.ellipse((150, 80, 330, 260), fill=(210, 30, 30))
    draw.rectangle((0, 300, 480, 360), fill=(30, 60, 200))
    return img


def _ocr_part(description: str) -> str:
    match = re.search(r'text in image: "([^"]*)"', description)
    return match.group(1) if match else ""


@pytest.fixture(scope="module")
def offline() -> OfflineDescriber:
    describer = build_captioner("offline")
    assert isinstance(describer, OfflineDescriber)
    return describer


@pytest.mark.slow
def test_offline_reads_large_text_in_a_meme(offline: OfflineDescriber) -> None:
    [description] = offline.describe([_meme("WORST MONDAY EVER")])
    assert DESCRIPTION.match(description), description
    text = _ocr_part(description)
    assert text == text.lower()
    assert "worstmondayever" in text.replace(" ", "")


@pytest.mark.slow
def test_offline_names_objects_and_scene_of_a_photo(offline: OfflineDescriber) -> None:
    [description] = offline.describe([_photo()])
    assert DESCRIPTION.match(description), description
    labels = description.split(".")[0].removeprefix("objects: ").split(", ")
    assert 1 <= len(labels) <= 3 and all(labels)
    assert "scene: " in description


@pytest.mark.slow
def test_offline_keeps_batch_order(offline: OfflineDescriber) -> None:
    images = [_meme("HAPPY FRIDAY"), _photo(), _meme("NEVER AGAIN")]
    out = offline.describe(images)
    assert len(out) == 3
    assert "happy" in _ocr_part(out[0]) and "friday" in _ocr_part(out[0])
    assert _ocr_part(out[1]) == ""
    assert "never" in _ocr_part(out[2]) and "again" in _ocr_part(out[2])
    assert offline.describe([]) == []


@pytest.fixture(scope="module")
def offline_no_ocr() -> OfflineDescriber:
    describer = build_captioner("offline:no-ocr")
    assert isinstance(describer, OfflineDescriber)
    return describer


def test_offline_without_ocr_has_no_text_clause(offline_no_ocr: OfflineDescriber) -> None:
    describer = offline_no_ocr
    assert describer.name == "offline:no-ocr"
    [description] = describer.describe([_meme("WORST MONDAY EVER")])
    assert DESCRIPTION.match(description), description
    assert "text in image" not in description


def test_offline_accepts_non_rgb_and_tiny_images(offline_no_ocr: OfflineDescriber) -> None:
    out = offline_no_ocr.describe([Image.new("L", (3, 2), 30), Image.new("RGBA", (1, 500), (0, 0, 255, 255))])
    assert len(out) == 2 and all(DESCRIPTION.match(d) for d in out)


@pytest.mark.parametrize(("colour", "expected"), [
    ((10, 10, 15), {"dark", "mostly black"}),
    ((250, 250, 250), {"bright", "mostly white"}),
    ((220, 30, 20), {"warm colours", "mostly red"}),
    ((20, 60, 220), {"cool colours", "mostly blue"}),
])
def test_scene_attributes_of_flat_colours(colour: tuple[int, int, int], expected: set[str]) -> None:
    # Small noise so colourfulness is that of a colour, not of a flat test card.
    rng = np.random.default_rng(1)
    pixels = (np.array(colour)[None, None, :] + rng.normal(0, 3, (32, 32, 3))).clip(0, 255).astype(np.uint8)
    attrs = set(scene_attributes(Image.fromarray(pixels)))
    assert expected <= attrs, attrs


def test_ocr_text_is_cleaned_for_the_description() -> None:
    assert clean_text('  Say "NO"\n to\tMondays ', 100) == "say 'no' to mondays"
    assert clean_text("one two three", 9) == "one two"


def test_none_captioner_returns_empty_strings() -> None:
    captioner = build_captioner("none")
    assert isinstance(captioner, Captioner)
    assert captioner.name == "none"
    assert captioner.describe([_photo(), _photo()]) == ["", ""]


@pytest.mark.parametrize("spec", ["", "blip", "vlm:", "offline:fast", "NONE"])
def test_unknown_spec_is_a_clear_error(spec: str) -> None:
    with pytest.raises(ValueError, match="unknown captioner spec"):
        build_captioner(spec)


# vlm:<folder> on tiny random checkpoints of every family: tests/test_vlm_families.py
