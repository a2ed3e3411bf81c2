"""proxy-memes (synthetic): a multimodal set where only the IMAGE carries the sentiment.

No labelled image+text data is reachable offline, so this proxy stands in for MVSA/MSED when checking
that the pipeline reads images at all. Each sample is a short sentiment phrase ("WORST PIZZA EVER",
"COFFEE AT NOON") rendered meme-style — large bold dark DejaVu Sans on a light background with a few
pale shapes, so OCR reads it — paired with a post text drawn from a fixed list of neutral, unrelated
lines ("saw this today", "thoughts?") chosen independently of the label. A text-only model therefore
cannot beat chance (1/3 on the balanced set), while one that reads the image description can.

Phrases come from templates × nouns, with the same nouns in every class, so a model must read the
sentiment words, not memorise topics. Everything is deterministic in the seed. This is NOT a benchmark
and numbers on it say nothing about real social media; use it as a smoke test of the image path.
"""
from __future__ import annotations

import io
import random
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from affectstream.model.config import SENTIMENT_LABELS
from affectstream.training.samples import Dataset, Sample
from affectstream.training.splits import assign_splits

NAME = "proxy-memes (synthetic)"
DEFAULT_SIZE = 600
FONT_PATH = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")

NOUNS = ("coffee", "monday", "weekend", "movie", "pizza", "phone", "concert", "traffic", "weather",
         "game", "update", "flight", "hotel", "lunch", "train", "service", "camera", "album", "book",
         "class", "beach", "party", "job", "team", "song", "show", "trip", "dinner", "laptop", "office")
TEMPLATES: dict[str, tuple[str, ...]] = {
    "positive": ("{n} is amazing", "love this {n}", "best {n} ever", "what a great {n}",
                 "so happy with {n}", "{n} made my day", "awesome {n}", "wonderful {n} today"),
    "negative": ("{n} is terrible", "hate this {n}", "worst {n} ever", "what an awful {n}",
                 "so sad about {n}", "{n} ruined my day", "horrible {n}", "disgusting {n} today"),
    "neutral": ("{n} at noon", "the {n} is blue", "{n} on tuesday", "about the {n}",
                "{n} number seven", "another {n} photo", "the {n} schedule", "{n} in the morning"),
}
POST_TEXTS = ("posting this from the train", "thoughts?", "saw this today", "found this on my feed",
              "no comment", "just leaving this here", "sent to me by a friend", "new post",
              "look at this", "from this morning", "ok", "tag someone", "caption this", "today's one",
              "saw it on the way home", "my cousin sent this", "anyway", "for the group chat",
              "seen downtown", "what do you think", "sharing", "this one", "via a friend", "lol ok")
_BACKGROUNDS = ((255, 248, 220), (230, 244, 255), (240, 255, 240), (255, 235, 238), (245, 240, 255),
                (255, 250, 240), (236, 252, 252), (250, 250, 250), (255, 244, 229), (238, 245, 233))
_INKS = ((20, 20, 20), (25, 35, 80), (70, 30, 20), (10, 60, 40), (60, 20, 70))


def phrases(label: str) -> list[str]:
    """Every phrase of one class, in a fixed order."""
    return [t.format(n=n) for t in TEMPLATES[label] for n in NOUNS]


def load_proxy(*, seed: int = 13, size: int = DEFAULT_SIZE, image_size: tuple[int, int] = (384, 384),
               split_file: str | None = None) -> Dataset:
    """``size`` samples, balanced over the three classes (any remainder goes to the first classes)."""
    if size < 3:
        raise ValueError("proxy size must be at least 3 (one per class)")
    rng = random.Random(f"proxy:{seed}")
    items: list[tuple[str, str]] = []
    for k, label in enumerate(SENTIMENT_LABELS):
        n = size // 3 + (1 if k < size % 3 else 0)
        pool = phrases(label)
        rng.shuffle(pool)
        items += [(label, pool[i % len(pool)]) for i in range(n)]  # repeats only past 240 per class
    rng.shuffle(items)
    samples = [_make_sample(i, label, phrase, seed, rng, image_size)
               for i, (label, phrase) in enumerate(items)]
    skipped: dict[str, int] = {}
    notes: dict[str, int] = {}
    samples = assign_splits(samples, seed=seed, split_file=split_file, skipped=skipped, notes=notes)
    return Dataset(name=NAME, samples=samples, has_emotion=False, skipped=skipped, notes=notes,
                   source=f"synthetic (seed {seed}, size {size})")


def _make_sample(i: int, label: str, phrase: str, seed: int, rng: random.Random,
                 image_size: tuple[int, int]) -> Sample:
    image = render_meme(phrase.upper(), seed=seed * 100_003 + i, size=image_size)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return Sample(id=f"proxy-{i:05d}", text=rng.choice(POST_TEXTS), label=label, split="train",
                  image_bytes=buf.getvalue())


@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if FONT_PATH.is_file():
        return ImageFont.truetype(str(FONT_PATH), px)
    return ImageFont.load_default(size=px)  # Pillow >= 10.1 ships a scalable fallback


def render_meme(text: str, seed: int, size: tuple[int, int] = (384, 384)) -> Image.Image:
    """``text`` in large bold dark letters, centred on a light background with a few pale shapes.

    Words are drawn one by one with a wide gap because OCR tends to merge bold capitals separated by a
    normal space ("WORSTMONDAYEVER"). Deterministic in (text, seed, size).
    """
    rng = random.Random(f"meme:{seed}:{text}")
    w, h = size
    bg = rng.choice(_BACKGROUNDS)
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    _draw_shapes(draw, rng, size, bg)
    words = text.split() or [" "]
    font, lines, gap, line_h = _fit(draw, words, w, h)
    ink = rng.choice(_INKS)
    y = (h - line_h * len(lines)) // 2
    for line in lines:
        widths = [_text_width(draw, wd, font) for wd in line]
        x = (w - sum(widths) - gap * (len(line) - 1)) // 2
        for wd, ww in zip(line, widths):
            draw.text((x, y), wd, font=font, fill=ink)
            x += ww + gap
        y += line_h
    return img


def _draw_shapes(draw: ImageDraw.ImageDraw, rng: random.Random, size: tuple[int, int],
                 bg: tuple[int, int, int]) -> None:
    """Pale circles and bars near the edges: some visual variety without hurting OCR contrast."""
    w, h = size
    for _ in range(rng.randint(2, 5)):
        tint = tuple(max(0, c - rng.randint(15, 40)) for c in bg)
        r = rng.randint(min(w, h) // 16, min(w, h) // 6)
        cx = rng.choice((rng.randint(0, w // 6), rng.randint(5 * w // 6, w)))
        cy = rng.randint(0, h)
        if rng.random() < 0.5:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tint)
        else:
            draw.rectangle((cx - r, cy - r // 3, cx + r, cy + r // 3), fill=tint)
    draw.rectangle((0, 0, w - 1, h - 1), outline=tuple(max(0, c - 60) for c in bg), width=max(2, w // 96))


def _fit(draw: ImageDraw.ImageDraw, words: list[str], w: int, h: int
         ) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, list[list[str]], int, int]:
    """The largest font (and its line breaks) whose text block fits in ~85% of the image."""
    px = max(10, h // 6)
    while True:
        font = _font(px)
        gap = int(px * 0.5)
        line_h = int(px * 1.3)
        lines = _wrap(draw, words, font, gap, int(w * 0.85))
        widest = max(sum(_text_width(draw, wd, font) for wd in ln) + gap * (len(ln) - 1) for ln in lines)
        if (widest <= w * 0.85 and line_h * len(lines) <= h * 0.85) or px <= 10:
            return font, lines, gap, line_h
        px = int(px * 0.9)


def _wrap(draw: ImageDraw.ImageDraw, words: list[str], font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
          gap: int, max_w: int) -> list[list[str]]:
    lines: list[list[str]] = [[]]
    width = 0
    for wd in words:
        ww = _text_width(draw, wd, font)
        if lines[-1] and width + gap + ww > max_w:
            lines.append([])
            width = 0
        width += (gap if lines[-1] else 0) + ww
        lines[-1].append(wd)
    return lines


def _text_width(draw: ImageDraw.ImageDraw, text: str,
                font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)
