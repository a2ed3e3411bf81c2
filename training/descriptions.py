"""Description pre-computation: caption a dataset's images once, cache the results on disk.

Keyed by the sha256 of the image bytes, so epochs, reruns, ablations and reposted images never caption
twice. A captioner made of parts (the offline describer) is cached per part, by (part, part version,
sha256): switching parts, or adding faces to descriptions whose text was read before, computes only the
parts missing. Others are cached whole, by (captioner name, sha256); the name carries the version. Each
cache is an append-only JSONL file: a crash loses at most the batch being written.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from PIL import Image
from tqdm import tqdm

from affectstream.model.captioners import Captioner, PartedCaptioner
from affectstream.model.images import ImageError, ImageLimits, decode_image, image_sha256
from affectstream.training.samples import Sample


class JsonlCache:
    """sha256 -> a JSON value (under ``field`` in each line), in an append-only JSONL file."""

    def __init__(self, path: Path, field: str):
        self.path, self.field = path, field
        self.entries: dict[str, Any] = {}
        if self.path.exists():
            for line in self.path.read_bytes().splitlines():
                try:
                    entry = orjson.loads(line)
                    self.entries[entry["sha256"]] = entry[field]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line from an interrupted run
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __contains__(self, sha: str) -> bool:
        return sha in self.entries

    def get(self, sha: str) -> Any:
        return self.entries.get(sha)

    def put_many(self, items: dict[str, Any]) -> None:
        self.entries.update(items)
        with self.path.open("ab") as f:
            for sha, value in items.items():
                f.write(orjson.dumps({"sha256": sha, self.field: value}) + b"\n")


class DescriptionCache(JsonlCache):
    """Whole descriptions of one captioner: ``descriptions-<name>.jsonl``."""

    def __init__(self, directory: str | Path, captioner_name: str):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", captioner_name)
        super().__init__(Path(directory) / f"descriptions-{slug}.jsonl", "description")


class PartCache(JsonlCache):
    """One part's values at one part version, shared by every captioner with that part:
    ``parts/<part>-v<version>.jsonl``."""

    def __init__(self, directory: str | Path, part: str, version: int):
        super().__init__(Path(directory) / "parts" / f"{part}-v{version}.jsonl", "value")


class WholeStore:
    """Cached descriptions of a captioner without parts."""

    def __init__(self, captioner: Captioner, directory: str | Path):
        self.captioner = captioner
        self.cache = DescriptionCache(directory, captioner.name)

    def lookup(self, sha: str) -> str | None:
        return self.cache.get(sha)

    def fill(self, shas: list[str], images: list[Image.Image]) -> list[str]:
        texts = self.captioner.describe(images)
        self.cache.put_many(dict(zip(shas, texts)))
        return texts


class PartStore:
    """Cached descriptions of a captioner made of parts: each part computed only for the images lacking it."""

    def __init__(self, captioner: PartedCaptioner, directory: str | Path):
        self.captioner = captioner
        self.caches = {p: PartCache(directory, p, captioner.part_versions[p]) for p in captioner.parts}

    def lookup(self, sha: str) -> str | None:
        if not all(sha in cache for cache in self.caches.values()):
            return None
        return self.captioner.compose({p: cache.get(sha) for p, cache in self.caches.items()})

    def fill(self, shas: list[str], images: list[Image.Image]) -> list[str]:
        for part, cache in self.caches.items():
            missing = [i for i, sha in enumerate(shas) if sha not in cache]
            if missing:
                values = self.captioner.describe_parts([images[i] for i in missing], (part,))[part]
                cache.put_many({shas[i]: value for i, value in zip(missing, values)})
        return [self.captioner.compose({p: cache.get(sha) for p, cache in self.caches.items()}) for sha in shas]


def description_store(captioner: Captioner, directory: str | Path) -> WholeStore | PartStore:
    if isinstance(captioner, PartedCaptioner):
        return PartStore(captioner, directory)
    return WholeStore(captioner, directory)


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
    store = description_store(captioner, cache_dir)
    descriptions: dict[str, str] = {}
    errors: dict[str, int] = {}
    pending: dict[str, Image.Image] = {}  # sha -> decoded image: a batch describes a reposted image once
    waiting: list[tuple[str, str]] = []  # (sample id, sha) of the samples the batch serves

    def flush() -> None:
        if not pending:
            return
        texts = dict(zip(pending, store.fill(list(pending), list(pending.values()))))
        for sample_id, sha in waiting:
            descriptions[sample_id] = texts[sha]
        pending.clear()
        waiting.clear()

    for sample in tqdm(samples, desc=f"describe[{captioner.name}]", unit="img", leave=False):
        data = image_bytes_of(sample)
        if data is None:
            descriptions[sample.id] = ""
            if sample.has_image:
                errors["image_unreadable"] = errors.get("image_unreadable", 0) + 1
            continue
        sha = image_sha256(data)
        cached = store.lookup(sha)
        if cached is not None:
            descriptions[sample.id] = cached
            continue
        try:
            if sha not in pending:
                # reduced as serving reduces it (JPEG draft): the same pixels, so the same description
                pending[sha] = decode_image(data, limits, getattr(captioner, "max_input_side", None))
            waiting.append((sample.id, sha))
        except ImageError as exc:  # truncated/corrupt dataset images become text-only, as in streaming
            descriptions[sample.id] = ""
            errors[exc.reason] = errors.get(exc.reason, 0) + 1
        if len(pending) >= batch_size:
            flush()
    flush()
    return descriptions, errors
