"""Description pre-computation: caption a dataset's images once, cache the strings on disk.

Keyed by (captioner name, sha256 of the image bytes), so epochs, reruns, ablations and reposted images
never caption twice. The cache is an append-only JSONL file per captioner: a crash loses at most the
batch being written.
"""
from __future__ import annotations

import re
from pathlib import Path

import orjson
from tqdm import tqdm

from affectstream.model.captioners import Captioner
from affectstream.model.images import ImageError, ImageLimits, decode_image, image_sha256
from affectstream.training.samples import Sample


class DescriptionCache:
    def __init__(self, directory: str | Path, captioner_name: str):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", captioner_name)
        self.path = Path(directory) / f"descriptions-{slug}.jsonl"
        self.entries: dict[str, str] = {}
        if self.path.exists():
            for line in self.path.read_bytes().splitlines():
                try:
                    entry = orjson.loads(line)
                    self.entries[entry["sha256"]] = entry["description"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line from an interrupted run
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, sha: str) -> str | None:
        return self.entries.get(sha)

    def put_many(self, items: dict[str, str]) -> None:
        self.entries.update(items)
        with self.path.open("ab") as f:
            for sha, description in items.items():
                f.write(orjson.dumps({"sha256": sha, "description": description}) + b"\n")


def image_bytes_of(sample: Sample) -> bytes | None:
    if sample.image_bytes is not None:
        return sample.image_bytes
    if sample.image_path is not None:
        try:
            return Path(sample.image_path).read_bytes()
        except OSError:
            return None
    return None


def describe_samples(samples: list[Sample], captioner: Captioner, cache_dir: str | Path,
                     batch_size: int = 32, limits: ImageLimits = ImageLimits()) -> tuple[dict[str, str], dict[str, int]]:
    """sample id -> description ("" for text-only or undecodable images), plus counts of image errors."""
    cache = DescriptionCache(cache_dir, captioner.name)
    descriptions: dict[str, str] = {}
    errors: dict[str, int] = {}
    pending: list[tuple[str, str, object]] = []  # (sample id, sha, decoded image)

    def flush() -> None:
        if not pending:
            return
        texts = captioner.describe([image for _, _, image in pending])
        cache.put_many({sha: text for (_, sha, _), text in zip(pending, texts)})
        for (sample_id, _, _), text in zip(pending, texts):
            descriptions[sample_id] = text
        pending.clear()

    for sample in tqdm(samples, desc=f"describe[{captioner.name}]", unit="img", leave=False):
        data = image_bytes_of(sample)
        if data is None:
            descriptions[sample.id] = ""
            if sample.has_image:
                errors["image_unreadable"] = errors.get("image_unreadable", 0) + 1
            continue
        sha = image_sha256(data)
        cached = cache.get(sha)
        if cached is not None:
            descriptions[sample.id] = cached
            continue
        try:
            pending.append((sample.id, sha, decode_image(data, limits)))
        except ImageError as exc:  # truncated/corrupt dataset images become text-only, as in streaming
            descriptions[sample.id] = ""
            errors[exc.reason] = errors.get(exc.reason, 0) + 1
        if len(pending) >= batch_size:
            flush()
    flush()
    return descriptions, errors
