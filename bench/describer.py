"""The offline describer's speed per part, side by side in one run: each part alone, version 2 with every
part (faces on), and version 1 (no faces), in images per second at batch 32.

    python -m affectstream.bench.describer --images /path/to/jpgs -n 256

Real photos where ``--images`` names a folder of them (faces and text occur as in the data: the rates
depend on it), else the bench's synthetic mix (bench/workload.py: no faces, one meme in four). Images are
decoded and reduced towards each describer's ``max_input_side`` before the clock starts, as the caption
worker does. The best of ``rounds`` runs counts (the machine may be shared).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from PIL import Image

GOAL_IMAGES_PER_S = 15.0  # version 2, faces on, 2 CPU cores
ROWS = [  # (row, captioner spec, parts timed: None = the whole describe())
    ("objects", "offline@2", ("objects",)),
    ("faces", "offline@2", ("faces",)),
    ("ocr", "offline@2", ("ocr",)),
    ("scene", "offline@2", ("scene",)),
    ("all parts (offline@2)", "offline@2", None),
    ("no OCR (offline@2:no-ocr)", "offline@2:no-ocr", None),
    ("version 1 (offline)", "offline", None),
]


def load_images(folder: Path | None, n: int) -> list[Image.Image]:
    if folder is None:
        from affectstream.bench.workload import images

        return images(n)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    return [Image.open(p).convert("RGB") for p in files]


def reduced(images: list[Image.Image], side: int) -> list[Image.Image]:
    out = []
    for image in images:
        small = image.copy()
        small.thumbnail((side, side), Image.Resampling.BILINEAR)
        out.append(small)
    return out


def rate(spec: str, parts: tuple[str, ...] | None, images: list[Image.Image], batch: int, rounds: int) -> float:
    from affectstream.model.captioners import build_captioner

    describer = build_captioner(spec)
    images = reduced(images, describer.max_input_side)
    run = describer.describe if parts is None else (lambda chunk: describer.describe_parts(chunk, parts))
    run(images[:2])  # loads the models
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        for start in range(0, len(images), batch):
            run(images[start:start + batch])
        best = max(best, len(images) / (time.perf_counter() - started))
    return best


def faces_found(images: list[Image.Image]) -> float:
    from affectstream.model.captioners.faces import FaceReader

    reader = FaceReader()
    return sum(bool(e) for e in reader.expressions(images)) / max(len(images), 1)


def run(folder: Path | None, n: int, batch: int, rounds: int) -> dict[str, float]:
    images = load_images(folder, n)
    results = {row: rate(spec, parts, images, batch, rounds) for row, spec, parts in ROWS}
    results["share of images with a face"] = faces_found(images)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None, help="folder of real photos (default: synthetic)")
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results = run(args.images, args.n, args.batch, args.rounds)
    source = f"{args.n} images from {args.images}" if args.images else f"{args.n} synthetic images"
    print(f"offline describer, {source}, batch {args.batch}, best of {args.rounds}")
    for row, value in results.items():
        print(f"  {row:<30} {value:8.2f}" + ("" if row.startswith("share") else " img/s"))
    met = results["all parts (offline@2)"] >= GOAL_IMAGES_PER_S
    print(f"  goal: offline@2 >= {GOAL_IMAGES_PER_S:g} img/s: {'met' if met else 'not met'}")


if __name__ == "__main__":
    main()
