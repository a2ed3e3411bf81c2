"""Classify path, model only: naive per-post fp32 vs a Hugging Face pipeline vs `BatchPredictor`, and the
model FLOP utilisation of the serving forward pass.

Every variant does the whole job for a post: tokenize → forward → top-K → rationale → JSON bytes
(the pipeline: tokenize → forward → softmax → JSON, it has no rationale). Variants are timed
interleaved, round after round, and each keeps its best round: on a shared host the best round is the
one least disturbed by neighbours, and interleaving gives every variant the same chances.

FLOPs per post (forward only, multiply-add = 2 FLOPs), from the encoder config and the post's real
token count T (padding excluded):

    FLOPs(T) = 2 · P · T  +  4 · L · T² · H

P = non-embedding encoder parameters (per layer: 4·H² + 4·H attention, 2·H·I + H + I feed-forward,
2 · 2·H layer norms), L layers, H hidden size, I intermediate size; 4·L·T²·H counts Q·Kᵀ and
attention·V. The scorer and heads (< 1%) are left out. Utilisation = real FLOPs / forward time / peak,
with the peak measured in the same run by a bf16 (and fp32) matmul of 2048³ and of the encoder's
feed-forward shape.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson
import torch

from affectstream.bench.workload import Shape


@dataclass
class Timed:
    posts_per_s: float
    seconds: float   # best round
    n: int           # posts per round


def interleaved(variants: dict[str, Callable[[], int]], rounds: int) -> dict[str, Timed]:
    """Run each variant (a callable returning how many posts it processed) once per round, interleaved;
    keep each variant's best round."""
    best: dict[str, Timed] = {}
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            n = run()
            seconds = time.perf_counter() - started
            if name not in best or n / seconds > best[name].posts_per_s:
                best[name] = Timed(n / seconds, seconds, n)
    return best


# --- FLOPs and peaks -------------------------------------------------------------------------------

def encoder_dims(config: dict) -> tuple[int, int, int]:
    return config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]


def nonembedding_params(config: dict) -> int:
    layers, h, i = encoder_dims(config)
    per_layer = (4 * h * h + 4 * h) + (2 * h * i + h + i) + 2 * (2 * h)
    return layers * per_layer


def flops_per_post(config: dict, tokens: int) -> float:
    layers, h, _ = encoder_dims(config)
    return 2 * nonembedding_params(config) * tokens + 4 * layers * tokens * tokens * h


def matmul_peak(dtype: torch.dtype, m: int, k: int, n: int, device: torch.device, seconds: float = 1.0) -> float:
    """Best GFLOP/s of (m×k)·(k×n) over a few repeats, in this process, now."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = 0.0
    with torch.inference_mode():
        a @ b
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or best == 0.0:
            sync()
            started = time.perf_counter()
            a @ b
            sync()
            best = max(best, 2 * m * k * n / (time.perf_counter() - started) / 1e9)
    return best


# --- the three variants ----------------------------------------------------------------------------

def load_serving(directory: Path, device: str, batch_size: int, threads: int = 0):
    from affectstream.model.predictor import BatchPredictor

    return BatchPredictor.from_directory(directory, device=device, threads=threads, batch_size=batch_size)


def load_naive(directory: Path, device: str):
    """The same deployed model, fp32, eager, as a straightforward agent would call it: one post at a time."""
    from affectstream.model.predictor import BatchPredictor

    return BatchPredictor.from_directory(directory, device=device, dtype="fp32", batch_size=1)


def build_pipeline(shape: Shape, root: Path, device: str):
    """`pipeline("text-classification")` over an encoder of the same shape: AutoModelForSequenceClassification
    from the same encoder config (random head), saved with the deployed tokenizer."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    directory = root / f"pipeline-{shape.name}"
    if not (directory / "config.json").exists():
        config_dict = dict(shape.encoder_config)
        model_type = config_dict.pop("model_type")
        config = AutoConfig.for_model(model_type, **config_dict)
        config.num_labels = 3
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(config)
        model.save_pretrained(directory)
        AutoTokenizer.from_pretrained(str(shape.directory)).save_pretrained(directory)
    dev = 0 if device == "cuda" else -1
    return pipeline("text-classification", model=str(directory), tokenizer=str(directory), device=dev, top_k=None)


def model_only(shape: Shape, root: Path, *, pairs: list[tuple[str, str]], batch_sizes: tuple[int, ...],
               naive_posts: int, rounds: int, device: str, say: Callable[[str], None]) -> dict:
    """posts/s for naive, pipeline and serving (at each batch size), and the serving forward's MFU."""
    say(f"  [{shape.name}] loading naive, pipeline and serving variants ...")
    naive = load_naive(shape.directory, device)
    pipe = build_pipeline(shape, root, device)
    serving = load_serving(shape.directory, device, max(batch_sizes))
    naive_pairs = pairs[:naive_posts]

    def run_naive() -> int:
        for pair in naive_pairs:
            orjson.dumps(naive.predict([pair])[0].to_dict())
        return len(naive_pairs)

    def run_pipeline() -> int:
        for text, description in naive_pairs:
            inputs = {"text": text, "text_pair": description} if description else text
            orjson.dumps(pipe(inputs))
        return len(naive_pairs)

    def run_serving(batch: int) -> Callable[[], int]:
        def run() -> int:
            # the classify agent hands the predictor one micro-batch at a time
            serving.batch_size = batch
            for start in range(0, len(pairs), batch):
                for prediction in serving.predict(pairs[start:start + batch]):
                    orjson.dumps(prediction.to_dict())
            return len(pairs)
        return run

    variants = {"naive": run_naive, "pipeline": run_pipeline}
    variants.update({f"serving@{b}": run_serving(b) for b in batch_sizes})
    for batch in batch_sizes:  # warm-up: first calls allocate and pick kernels
        serving.predict(pairs[:batch])
    for pair in naive_pairs[:2]:
        naive.predict([pair]), pipe(pair[0])
    say(f"  [{shape.name}] timing {len(variants)} variants x {rounds} rounds, interleaved ...")
    timed = interleaved(variants, rounds)

    mfu = forward_utilisation(shape, serving, pairs, batch=32 if 32 in batch_sizes else max(batch_sizes),
                              rounds=rounds)
    return {
        "shape": shape.name,
        "dtype_serving": str(serving.dtype).replace("torch.", ""),
        "packed_linears": getattr(serving, "packed_linears", 0),
        "naive_posts_per_s": timed["naive"].posts_per_s,
        "pipeline_posts_per_s": timed["pipeline"].posts_per_s,
        "serving_posts_per_s": {b: timed[f"serving@{b}"].posts_per_s for b in batch_sizes},
        **mfu,
    }


def forward_utilisation(shape: Shape, serving, pairs: list[tuple[str, str]], batch: int, rounds: int) -> dict:
    """Time the serving model's forward alone on length-sorted micro-batches of `batch` posts."""
    from affectstream.model.tokenization import encode_pairs

    order = sorted(pairs, key=lambda p: len(p[0]) + len(p[1]))
    batches = []
    for start in range(0, len(order) - batch + 1, batch):
        chunk = order[start:start + batch]
        enc = encode_pairs(serving.tokenizer, [t for t, _ in chunk], [d for _, d in chunk], serving.config.max_length)
        batches.append(({k: v.to(serving.device) for k, v in enc.model_inputs().items()},
                        enc.attention_mask.sum(dim=1).tolist(), enc.input_ids.numel()))
    sync = torch.cuda.synchronize if serving.device.type == "cuda" else (lambda: None)
    real_flops = sum(flops_per_post(shape.encoder_config, t) for _, tokens, _ in batches for t in tokens)
    padded_tokens = sum(n for _, _, n in batches)
    real_tokens = sum(sum(tokens) for _, tokens, _ in batches)
    best = float("inf")
    with torch.inference_mode():
        for inputs, _, _ in batches[:1]:
            serving.model(**inputs, top_k=serving.top_k)
        for _ in range(rounds):
            sync()
            started = time.perf_counter()
            for inputs, _, _ in batches:
                serving.model(**inputs, top_k=serving.top_k)
            sync()
            best = min(best, time.perf_counter() - started)
    n_posts = batch * len(batches)
    return {
        "forward_batch": batch,
        "forward_posts_per_s": n_posts / best,
        "forward_gflops": real_flops / best / 1e9,
        "flops_per_post": real_flops / n_posts,
        "tokens_per_post": real_tokens / n_posts,
        "padding_share": 1 - real_tokens / padded_tokens,
    }


def peaks(shapes: list[Shape], device: torch.device, seconds: float) -> dict:
    """Measured matmul peaks: 2048³ in bf16 and fp32, and each encoder's feed-forward (M=32·48 tokens)."""
    out = {
        "bf16_2048": matmul_peak(torch.bfloat16, 2048, 2048, 2048, device, seconds),
        "fp32_2048": matmul_peak(torch.float32, 2048, 2048, 2048, device, seconds),
    }
    for shape in shapes:
        _, h, i = encoder_dims(shape.encoder_config)
        out[f"bf16_ffn_{shape.name}"] = matmul_peak(torch.bfloat16, 32 * 48, h, i, device, seconds)
    return out

