"""The offline describer's parts: names (one grammar for trainer, worker and model configs), what each part
adds to a description, and the training cache per (part, part version, image) that computes only the parts
it lacks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affectstream.model.captioners import OfflineConfig, OfflineDescriber, PartedCaptioner, build_captioner
from affectstream.model.captioners.offline_spec import PARTS, Selection, describer_name, parse_offline_spec
from affectstream.training.descriptions import describe_samples
from affectstream.training.samples import Sample

ASTRONAUT = Path(__file__).parent / "data" / "astronaut_256.jpg"  # NASA, public domain


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((np.linspace(40, 220, 240)[None, :, None] * [1.0, 0.7, 0.4]
                            + rng.normal(0, 12, (160, 240, 3))).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("spec, name", [
    ("offline", "offline"),
    ("offline@1", "offline"),
    ("offline:no-ocr", "offline:no-ocr"),
    ("offline:-ocr", "offline:no-ocr"),
    ("offline@2", "offline@2"),
    ("offline@2:-faces", "offline@2:no-faces"),
    ("offline@2:no-faces", "offline@2:no-faces"),
    ("offline@2:-ocr,-faces", "offline@2:no-faces,no-ocr"),
    ("offline@2:faces", "offline@2:no-objects,no-ocr,no-scene"),
    ("offline@2:faces-only", "offline@2:no-objects,no-ocr,no-scene"),
    ("offline@2:scene,objects", "offline@2:no-faces,no-ocr"),
])
def test_specs_name_one_canonical_describer(spec, name):
    describer = build_captioner(spec)
    assert describer.name == name
    assert build_captioner(name).name == name  # a model config's captioner rebuilds the same describer


def test_every_selection_round_trips_through_its_name():
    for mask in range(1, 16):
        parts = tuple(p for i, p in enumerate(PARTS) if mask >> i & 1)
        assert parse_offline_spec(describer_name(Selection(2, parts))) == Selection(2, parts)


@pytest.mark.parametrize("spec", ["offline:faces", "offline@3", "offline@2:faces,-ocr", "offline@2:fast",
                                  "offline@2:-objects,-faces,-ocr,-scene", "offline@", "offline2"])
def test_bad_offline_specs_say_why(spec):
    with pytest.raises(ValueError, match="unknown captioner spec"):
        build_captioner(spec)


def test_version_1_has_no_faces_part():
    with pytest.raises(ValueError, match="version 1"):
        OfflineConfig(version=1, faces=True)


def test_every_selection_reads_images_at_one_size():
    # images are decoded reduced towards it: a part cached under one selection saw the pixels of any other
    sides = {build_captioner(spec).max_input_side for spec in ("offline", "offline:no-ocr", "offline@2",
                                                                "offline@2:faces", "offline@2:scene")}
    assert sides == {960}


def test_the_offline_describer_is_a_parted_captioner():
    describer = build_captioner("offline@2")
    assert isinstance(describer, PartedCaptioner)
    assert describer.parts == PARTS and set(describer.part_versions) == set(PARTS)


@pytest.fixture(scope="module")
def v2() -> OfflineDescriber:
    return build_captioner("offline@2:no-ocr")


@pytest.mark.slow
def test_faces_come_after_objects_and_before_the_scene(v2):
    [description] = v2.describe([Image.open(ASTRONAUT)])
    assert description.startswith("objects: ")
    assert " faces: a smiling face. scene: " in description


@pytest.mark.slow
def test_without_faces_version_2_describes_as_version_1(v2):
    images = [Image.open(ASTRONAUT), _photo()]
    assert build_captioner("offline@2:no-faces,no-ocr").describe(images) == build_captioner(
        "offline:no-ocr").describe(images)
    assert "faces:" not in v2.describe([_photo()])[0]  # no face, no clause


def test_each_part_alone_writes_only_its_clause():
    image = Image.open(ASTRONAUT)
    assert build_captioner("offline@2:faces").describe([image]) == ["faces: a smiling face."]
    [scene] = build_captioner("offline@2:scene").describe([image])
    assert scene.startswith("scene: ") and scene.count(":") == 1


class Recording(OfflineDescriber):
    """The real describer, noting which parts it computed for how many images."""

    def __init__(self, spec: str):
        super().__init__(OfflineConfig.of(parse_offline_spec(spec)))
        self.computed: list[tuple[str, int]] = []

    def describe_parts(self, images, parts):
        self.computed += [(p, len(images)) for p in parts]
        return super().describe_parts(images, parts)


def test_the_cache_computes_only_the_parts_it_lacks(tmp_path):
    samples = [Sample("face", "t", "positive", "train", image_bytes=ASTRONAUT.read_bytes()),
               Sample("photo", "t", "neutral", "train", image_bytes=_png(_photo())),
               Sample("same photo", "t", "neutral", "train", image_bytes=_png(_photo())),
               Sample("text", "t", "negative", "train")]
    scene_only = Recording("offline@2:scene")
    first, _ = describe_samples(samples, scene_only, tmp_path)
    assert scene_only.computed == [("scene", 2)]  # the reposted photo was read once

    faces_and_scene = Recording("offline@2:faces,scene")
    second, _ = describe_samples(samples, faces_and_scene, tmp_path)
    assert faces_and_scene.computed == [("faces", 2)]  # the scene came from the cache
    assert second["face"] == "faces: a smiling face. " + first["face"]
    assert second["photo"] == first["photo"] and second["text"] == ""

    again = Recording("offline@2:faces,scene")
    third, _ = describe_samples(samples, again, tmp_path)
    assert again.computed == [] and third == second
    assert third == dict(zip(["face", "photo", "same photo"], again.describe(
        [Image.open(ASTRONAUT), _photo(), _photo()]))) | {"text": ""}


def test_a_torn_last_line_of_a_part_cache_is_recomputed(tmp_path):
    samples = [Sample("face", "t", "positive", "train", image_bytes=ASTRONAUT.read_bytes())]
    faces = build_captioner("offline@2:faces")
    describe_samples(samples, faces, tmp_path)
    cache = tmp_path / "parts" / f"faces-v{faces.part_versions['faces']}.jsonl"
    cache.write_bytes(cache.read_bytes()[:-20])  # a run killed mid-write
    recording = Recording("offline@2:faces")
    out, _ = describe_samples(samples, recording, tmp_path)
    assert recording.computed == [("faces", 1)] and out == {"face": "faces: a smiling face."}
