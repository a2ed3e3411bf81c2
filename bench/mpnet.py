"""The MPNet row: serving throughput of an aligned model on the packaged MPNet-base encoder (`offline:mpnet`,
110M parameters, the `mpnet` extra), on the same posts as the model-only classify rows (`workload.posts`).

The model is built untrained (fresh scorer and heads: throughput does not depend on the weights' values)
into the bench's scratch folder, then served the way the classify agent serves it: `BatchPredictor` in its
own dtype choice (bf16 where the CPU has bf16 matrix units, or on a GPU), micro-batches of `batch` posts,
each post's whole job (tokenize → forward → top-K → rationale → JSON bytes). Rounds are timed and the best
kept (`classify.interleaved`), with the spread of the rounds to show how disturbed they were.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable


from affectstream.bench import classify, workload


def mpnet_dir(root: Path) -> workload.Shape:
    """An untrained aligned model on MPNet-base, deployed once under ``root``; raises
    ``model.encoders.EncoderUnavailable`` (saying how to install it) without the `mpnet` extra."""
    from affectstream.model.deploy import build_untrained
    from affectstream.model.encoders import MPNET_ENCODER

    directory = root / "mpnet"
    if not (directory / "model.safetensors").exists():
        build_untrained(directory, encoder=MPNET_ENCODER, text_normalization="social-v1")
    config = json.loads((directory / "config.json").read_text())["encoder_config"]
    return workload.Shape("mpnet", directory, config)


def mpnet_row(root: Path, *, posts: int = 256, batch: int = 32, rounds: int = 3, device: str = "auto",
              say: Callable[[str], None] = print) -> dict:
    """One bench row: serving posts/s at ``batch`` for the MPNet aligned model, with what it ran in."""
    shape = mpnet_dir(root)
    say(f"  [mpnet] serving {posts} posts at batch {batch}, {rounds} rounds ...")
    from affectstream.model.tokenization import encode_pairs

    serving = classify.load_serving(shape.directory, device, batch)
    pairs = workload.posts(posts)

    def run() -> int:
        return classify.serve_in_micro_batches(serving, pairs, batch)

    serving.predict(pairs[:batch])              # warm-up: first calls allocate and pick kernels
    load_before = os.getloadavg()[0]
    timed = classify.interleaved({"serving": run}, rounds)["serving"]
    load_after = os.getloadavg()[0]
    encoded = encode_pairs(serving.tokenizer, [t for t, _ in pairs], [d for _, d in pairs], serving.config.max_length,
                           normalization=serving.config.text_normalization)
    tokens = encoded.attention_mask.sum().item() / len(pairs)      # real tokens, padding excluded
    return {
        "shape": "mpnet",
        "encoder": "offline:mpnet (sentence-transformers/all-mpnet-base-v2)",
        "device": serving.device.type,
        "dtype_serving": str(serving.dtype).replace("torch.", ""),
        "packed_linears": getattr(serving, "packed_linears", 0),
        "batch": batch,
        "posts": len(pairs),
        "serving_posts_per_s": timed.posts_per_s,
        "round_spread": timed.spread,
        "load_average": [round(load_before, 2), round(load_after, 2)],   # 1-min load around the timing: neighbours
        "tokens_per_post": tokens,
        "flops_per_post": classify.flops_per_post(shape.encoder_config, round(tokens)),
    }
