"""Build the bundled demo sample: ``python -m affectstream.streaming.tools.sample.make_sample`` writes ``posts.jsonl``.

Deterministic (fixed seed): short posts about four made-up brands with positive, negative and
neutral wording; about 30% carry a small JPEG as ``{"b64": ...}`` (meme-style text images and simple
drawn scenes, some reposted so the caption cache has hits); and a handful of malformed lines that must
end up in the dead-letter topic (or as text-only results flagged ``image_error``) without stopping the
stream.

Then the brand-mention posts (``brand_posts``, inserted among the others without moving them): comparative
and multi-brand posts, @handles, #hashtags and $cashtags, brands named only in an image's text (a meme
whose words are the brand's name, read by the offline describer's OCR), and phrases the sample's
``brands.yaml`` excludes ("nimbus cloud", "city skyline"). Most of them list no ``brands``: the mentions
are found by the caption stage.
"""
from __future__ import annotations

import base64
import io
import random

import orjson
from PIL import Image, ImageDraw, ImageFont

from affectstream.streaming.tools.sample import POSTS

OUT = POSTS
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
SEED = 7
N_POSTS = 240
IMAGE_SHARE = 0.3
SIZE = 256

BRANDS = {
    "acme": ["acme phone", "my acme x2", "the new acme", "acme's battery", "acme support"],
    "nimbus": ["nimbus coffee", "the nimbus latte", "nimbus espresso", "my nimbus cold brew", "nimbus cafe"],
    "voltcar": ["voltcar", "my voltcar e5", "the voltcar charger", "voltcar's app", "voltcar service"],
    "skyline": ["skyline air", "the skyline flight", "skyline crew", "skyline's lounge", "skyline app"],
}
POSITIVE = [
    "love {b}, best purchase this year",
    "{b} is amazing, totally worth it",
    "honestly {b} made my morning so much better",
    "wow {b} exceeded every expectation, great job",
    "super happy with {b} today :)",
    "{b} never disappoints, fantastic as always",
    "big thanks to {b}, brilliant experience",
]
NEGATIVE = [
    "{b} is the worst, broken again",
    "so disappointed with {b}, total waste of money",
    "never buying {b} again, awful experience",
    "{b} crashed twice today, really frustrating",
    "terrible service from {b}, still waiting for a refund",
    "ugh {b} ruined my day, horrible",
    "{b} keeps failing, I hate this",
]
NEUTRAL = [
    "picked up {b} this afternoon",
    "{b} announced a new version on tuesday",
    "anyone tried {b} yet?",
    "{b} will be at the expo next week",
    "switching to {b} from my old one",
    "{b} update is rolling out in europe",
    "reading the {b} manual now",
]
MEMES = {
    "positive": ["BEST COFFEE EVER", "SO HAPPY TODAY", "LOVE IT", "GREAT DAY", "NAILED IT"],
    "negative": ["WORST MONDAY EVER", "SO ANGRY", "TOTAL FAIL", "NEVER AGAIN", "BROKEN AGAIN"],
    "neutral": ["NEW MODEL OUT", "MONDAY MEETING", "ON MY WAY", "JUST ARRIVED", "COMING SOON"],
}


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70, optimize=True)
    data = buf.getvalue()
    assert len(data) <= 30_000, len(data)
    return data


def meme(words: str, rng: random.Random) -> bytes:
    """Big dark words on a light background, wrapped to fit, like a reaction image."""
    bg = tuple(rng.randint(200, 250) for _ in range(3))
    img = Image.new("RGB", (SIZE, SIZE), bg)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, 34)
    lines = words.split(" ")
    lines = [" ".join(lines[i:i + 2]) for i in range(0, len(lines), 2)]
    y = (SIZE - 44 * len(lines)) // 2
    for line in lines:
        w = draw.textlength(line, font=font)
        draw.text(((SIZE - w) / 2, y), line, font=font, fill=(20, 20, 20))
        y += 44
    return _jpeg(img)


def scene(kind: str, rng: random.Random) -> bytes:
    """A simple drawn scene: a sunny sky, a rain cloud, a coffee cup, a car or a phone."""
    img = Image.new("RGB", (SIZE, SIZE), (235, 235, 235))
    d = ImageDraw.Draw(img)
    if kind == "sunny":
        img.paste((120, 180, 250), (0, 0, SIZE, SIZE))
        d.ellipse((150, 30, 220, 100), fill=(255, 220, 40))
        d.rectangle((0, 190, SIZE, SIZE), fill=(70, 170, 70))
    elif kind == "rain":
        img.paste((110, 110, 120), (0, 0, SIZE, SIZE))
        d.ellipse((40, 40, 200, 120), fill=(80, 80, 90))
        for _ in range(40):
            x, y = rng.randint(0, SIZE), rng.randint(120, SIZE)
            d.line((x, y, x - 4, y + 14), fill=(170, 190, 230), width=2)
    elif kind == "coffee":
        d.rectangle((70, 90, 170, 200), fill=(250, 250, 250), outline=(60, 40, 30), width=4)
        d.ellipse((70, 80, 170, 105), fill=(90, 55, 30))
        d.arc((160, 110, 210, 170), -90, 90, fill=(60, 40, 30), width=6)
        d.ellipse((40, 195, 200, 215), fill=(200, 200, 200))
    elif kind == "car":
        img.paste((200, 220, 240), (0, 0, SIZE, 170))
        d.rectangle((0, 170, SIZE, SIZE), fill=(90, 90, 90))
        d.rectangle((40, 120, 220, 170), fill=(200, 30, 40))
        d.polygon([(80, 120), (110, 85), (170, 85), (195, 120)], fill=(200, 30, 40))
        for x in (80, 180):
            d.ellipse((x - 20, 155, x + 20, 195), fill=(20, 20, 20))
    else:  # phone
        d.rounded_rectangle((85, 30, 170, 225), radius=14, fill=(30, 30, 35))
        d.rectangle((93, 45, 162, 205), fill=(60, 140, 220))
    return _jpeg(img)


def build(seed: int = SEED, n_posts: int = N_POSTS) -> list[bytes]:
    rng = random.Random(seed)
    # A pool of distinct images; posts draw from it, so some images are reposted (caption cache hits).
    pool: dict[str, list[bytes]] = {label: [meme(w, rng) for w in words] for label, words in MEMES.items()}
    scenes = {k: scene(k, rng) for k in ("sunny", "rain", "coffee", "car", "phone")}
    scene_for = {"positive": ["sunny", "coffee"], "negative": ["rain"], "neutral": ["car", "phone", "coffee"]}
    templates = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL}
    base_ms = 1_764_410_400_000  # 2025-11-29T10:00:00Z
    lines: list[bytes] = []
    for i in range(n_posts):
        brand = rng.choice(list(BRANDS))
        label = rng.choices(["positive", "negative", "neutral"], weights=[4, 3, 3])[0]
        text = rng.choice(templates[label]).format(b=rng.choice(BRANDS[brand]))
        post: dict = {"id": f"sample-{i:04d}", "text": text, "brands": [brand],
                      "created_at": base_ms + i * 1500, "author": f"user{rng.randint(1, 80)}", "lang": "en"}
        if rng.random() < IMAGE_SHARE:
            data = rng.choice(pool[label]) if rng.random() < 0.6 else scenes[rng.choice(scene_for[label])]
            post["image"] = {"b64": base64.b64encode(data).decode()}
            if rng.random() < 0.15:
                post["text"] = ""  # image-only post: the description carries the sentiment
        lines.append(orjson.dumps(post))
    lines += malformed()
    rng.shuffle(lines)
    return insert_brand_posts(lines, base_ms + n_posts * 1500, random.Random(seed + 1))


# (text, producer-asserted brands, words rendered as the image's text or None)
BRAND_POSTS = [
    ("switched from acme to nimbus, nimbus is so much better", [], None),
    ("skyline lost my bag again, but the voltcar e5 rental at the airport was brilliant", ["skyline"], None),
    ("acme phone or voltcar? acme battery died twice, voltcar app never fails", [], None),
    ("nimbus coffee beats every other cafe, even the one in the skyline air lounge", ["nimbus"], None),
    ("@acmesupport my acme x2 screen cracked after a week #acmefail", [], None),
    ("thanks @skylineair, upgraded to business for free #skylineair", [], None),
    ("$VOLT up 5% after the voltcar e5 launch, great quarter", [], None),
    ("$ACME down again, nobody wants a phone that overheats", [], None),
    ("#nimbuscoffee cold brew is perfect on a hot day", [], None),
    ("@voltcar charger broken at the station for the third time", [], None),
    ("a huge nimbus cloud over the city, rain incoming", [], None),
    ("the city skyline at dusk from my balcony", [], None),
    ("Acme, Nimbus, Voltcar and Skyline all at the expo this week", [], None),
    ("this made my whole morning", [], "NIMBUS"),
    ("never again, honestly", [], "ACME FAIL"),
    ("look what arrived", [], "VOLTCAR E5"),
    ("", [], "SKYLINE AIR"),
    ("my acme x2 photo of the charger", ["acme"], "VOLTCAR"),
]


def brand_posts(start_ms: int, rng: random.Random) -> list[bytes]:
    lines: list[bytes] = []
    for i, (text, asserted, words) in enumerate(BRAND_POSTS):
        post: dict = {"id": f"sample-brand-{i:02d}", "text": text, "brands": asserted,
                      "created_at": start_ms + i * 1500, "author": f"user{rng.randint(1, 80)}", "lang": "en"}
        if words is not None:
            post["image"] = {"b64": base64.b64encode(meme(words, rng)).decode()}
        lines.append(orjson.dumps(post))
    return lines


def insert_brand_posts(lines: list[bytes], start_ms: int, rng: random.Random) -> list[bytes]:
    """``lines`` with the brand posts inserted at spread-out positions; the original order is kept."""
    extra = brand_posts(start_ms, rng)
    out = list(lines)
    step = len(lines) // len(extra)
    for k, line in enumerate(extra):
        out.insert(k * (step + 1) + rng.randint(0, step - 1), line)
    return out


def malformed() -> list[bytes]:
    """Inputs that must never stop the stream; comments say where each one ends up."""
    return [
        b"this is not json {",                                                        # DLQ invalid_json
        orjson.dumps({"text": "no id here, love acme", "brands": ["acme"]}),          # DLQ missing_id
        orjson.dumps({"id": "bad-types-1", "text": 42, "brands": "acme"}),            # DLQ wrong types
        orjson.dumps({"id": "bad-image-1", "text": "", "image": {"b64": "!!!not base64@@@"}}),
        # garbage image but some text: classified text-only, flagged image_error (or DLQ if rejected at parse)
        orjson.dumps({"id": "bad-image-2", "text": "nimbus coffee again", "brands": ["nimbus"],
                      "image": {"b64": base64.b64encode(b"definitely not a jpeg").decode()}}),
        # the SSRF guard refuses loopback URLs
        orjson.dumps({"id": "ssrf-1", "text": "", "image": {"url": "http://127.0.0.1:6379/"}}),
    ]


def main() -> None:
    lines = build()
    OUT.write_bytes(b"\n".join(lines) + b"\n")
    print(f"wrote {len(lines)} lines, {OUT.stat().st_size / 1e6:.2f} MB -> {OUT}")


if __name__ == "__main__":
    main()
