"""What the benchmarks feed the models: realistic posts, images, and models of the real shapes.

Posts are the bundled sample's tweets; one in three carries an image description in the offline
describer's format (the classify agent sees exactly such pairs: the model-only rows feed them straight to
the predictor). The end-to-end bench (bench/e2e.py) sends real images instead (``encoded_images``), which
the caption stage decodes and describes. Models are the packaged MiniLM and
roberta-base's architecture with random weights (no RoBERTa weights ship in any package; the speed of a
network does not depend on its weights).
"""
from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from PIL import Image, ImageDraw, ImageFont

from affectstream.streaming.tools.sample import POSTS as SAMPLE

DESCRIPTIONS = [
    'objects: espresso, coffee mug. text in image: "worst monday ever". scene: dark, warm colours, mostly brown.',
    "objects: cellular telephone, screen. scene: bright, cool colours, mostly black and grey.",
    "objects: seashore, sandbar, lakeside. scene: bright, vivid colours, mostly blue.",
    'objects: web site. text in image: "order delayed again, thanks for nothing". scene: bright, mostly white.',
    "objects: sports car, grille. scene: vivid colours, warm colours, mostly red.",
    "objects: pizza. scene: warm colours, mostly orange and brown.",
]
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def sample_texts() -> list[str]:
    texts = []
    for line in SAMPLE.read_bytes().splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("text"), str) and obj["text"].strip():
            texts.append(obj["text"])
    return texts


def posts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (text, description) pairs: sample tweets, a third of them with an image description."""
    rng = random.Random(seed)
    texts = sample_texts()
    return [(rng.choice(texts), rng.choice(DESCRIPTIONS) if rng.random() < 1 / 3 else "") for _ in range(n)]


# --- images ----------------------------------------------------------------------------------------

def photo(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """Photo-like: a coloured gradient with noise and a few shapes; no text."""
    rng = np.random.default_rng(seed)
    w, h = size
    tint = rng.uniform(0.3, 1.0, 3)
    ramp = np.linspace(30, 230, w)[None, :, None] * tint
    pixels = (ramp + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(20, 120))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return img


def meme(text: str, size: tuple[int, int] = (640, 480), seed: int | None = None) -> Image.Image:
    """A photo with large capitals on it: the describer's OCR path (``seed``: the photo under the text)."""
    img = photo(len(text) if seed is None else seed, size)
    font = ImageFont.truetype(FONT, 44) if Path(FONT).exists() else ImageFont.load_default()
    ImageDraw.Draw(img).text((30, 30), text, font=font, fill="white", stroke_width=3, stroke_fill="black")
    return img


def images(n: int) -> list[Image.Image]:
    """n images, one in four a meme with text (social media mix)."""
    captions = ["WORST MONDAY EVER", "BEST DAY", "NEVER AGAIN", "LOVE IT"]
    return [meme(captions[i % 4]) if i % 4 == 3 else photo(i) for i in range(n)]


def encoded_images(n: int, first: int = 0, size: tuple[int, int] = (640, 480)) -> list[str]:
    """n distinct images as base64 JPEG (quality 85), ready for a post's ``{"image": {"b64": ...}}``: image
    ``first + i`` is a photo, one in four a meme with text, each drawn from its own seed, so no two share
    bytes (a caption cache keyed by sha256 never hits across them)."""
    import base64
    import io

    captions = ["WORST MONDAY EVER", "BEST DAY", "NEVER AGAIN", "LOVE IT"]
    out = []
    for k in range(first, first + n):
        img = meme(captions[k % 4], size, seed=k) if k % 4 == 3 else photo(k, size)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=85)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


@dataclass
class Workload:
    """The end-to-end bench's posts (bench/e2e.py): sample texts; with ``image_every`` > 0 every such post
    carries a real image, ``fresh_images``: one never sent before (the caption cache is cold for it), else
    one of ``images``, those an earlier (cold) workload sent (warm)."""
    name: str
    texts: list[str]
    image_every: int = 0
    fresh_images: bool = True
    images: list[str] = field(default_factory=list)  # base64 JPEGs sent so far (the warm pass reuses them)
    first_image: int = 10_000  # seed of the first fresh image (workloads that must not share images differ)
    _next: int = 0

    def posts(self, prefix: str, n: int) -> list[tuple[str, str, str | None]]:
        """n (id, text, base64 image or None); cold: images never sent before, warm: the cold pass's."""
        out = []
        n_images = sum(1 for i in range(n) if self.image_every and i % self.image_every == 0)
        if self.fresh_images and n_images:
            fresh = encoded_images(n_images, first=self.first_image + len(self.images))
            self.images.extend(fresh)
            pool = iter(fresh)
        for i in range(n):
            image = None
            if self.image_every and i % self.image_every == 0:
                if self.fresh_images:
                    image = next(pool)
                else:
                    image = self.images[self._next % len(self.images)]
                    self._next += 1
            out.append((f"{prefix}-{i}", self.texts[(i * 7) % len(self.texts)], image))
        return out


# --- models of the real shapes -----------------------------------------------------------------------

@dataclass
class Shape:
    name: str            # "minilm" | "roberta-base"
    directory: Path      # a deployed model directory (model.deploy layout)
    encoder_config: dict


def minilm_dir(root: Path) -> Shape:
    """The packaged MiniLM-L6 with fresh heads, as `affectstream demo` deploys it untrained."""
    import json

    from affectstream.model.deploy import build_untrained

    directory = root / "minilm"
    if not (directory / "model.safetensors").exists():
        build_untrained(directory)
    config = json.loads((directory / "config.json").read_text())["encoder_config"]
    return Shape("minilm", directory, config)


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="affectstream-bench-"))
