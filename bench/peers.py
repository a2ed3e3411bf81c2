"""Serving against what a user would pick instead, in the same run, on the same posts and batch sizes.

Peers (each from the same encoder weights as the served model, each tokenising and producing labels +
JSON, none of them computing top-K or a rationale):
- `transformers.pipeline("text-classification")` in bf16, called with `batch_size`: an
  AutoModelForSequenceClassification carrying the served model's encoder weights (its pooler and head are
  random: speed does not depend on them);
- ONNX Runtime fp32: that model exported with `torch.onnx.export`, default session options;
- ONNX Runtime int8: the same graph through `quantize_dynamic(weight_type=QInt8)`, as ORT's docs show.
Every variant's threads wait passively (torch: OMP_WAIT_POLICY=PASSIVE, set by the bench; ONNX Runtime:
`session.intra_op.allow_spinning=0`, as the serving backends set it).
A peer gets each batch of posts in arrival order and pads it to its longest post, as those tools do.

This project's serving (model/serving.py) on each backend does the whole job: tokenise → forward → top-K
→ rationale → JSON, with length bucketing inside each micro-batch. The ratio per batch size is the
backend that `auto` picks for this model on this machine against the best peer.

Methodology as bench/classify.py: a warm-up call per variant and batch size, then every variant once per
round, interleaved, each keeping its best round and reporting the spread of its rounds.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import orjson
import torch

from affectstream.bench.classify import interleaved, serve_in_micro_batches

SERVING_BACKENDS = ("torch", "onnx-fp32", "onnx-int8")
LABELS = ("negative", "neutral", "positive")


def peer_posts(n: int, seed: int = 0) -> tuple[list[str], str]:
    """n post texts: VADER tweets (cached or fetched), else the packaged sample posts; and which."""
    try:
        from affectstream.training.datasets import load_dataset

        texts = [s.text for s in load_dataset("vader").samples]
        source = "VADER tweets"
    except (OSError, RuntimeError, ValueError):
        from affectstream.bench.workload import sample_texts

        texts, source = sample_texts(), "packaged sample posts (VADER tweets not reachable)"
    rng = random.Random(seed)
    return [rng.choice(texts) for _ in range(n)] if n > len(texts) else rng.sample(texts, n), source


# --- the peers' model: a sequence classifier with the served encoder's weights ---------------------

def build_seqcls(model_dir: Path, root: Path) -> Path:
    from transformers import AutoModelForSequenceClassification

    from affectstream.model.deploy import load_deployed

    directory = root / f"peer-seqcls-{model_dir.name}"
    if (directory / "config.json").exists():
        return directory
    aligned, tokenizer, config = load_deployed(model_dir)
    encoder_config = config.encoder_config
    encoder_config.num_labels = len(LABELS)
    encoder_config.id2label = dict(enumerate(LABELS))
    encoder_config.label2id = {label: i for i, label in enumerate(LABELS)}
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(encoder_config)
    missing, unexpected = model.base_model.load_state_dict(aligned.encoder.state_dict(), strict=False)
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise RuntimeError(f"encoder weights do not fit the sequence classifier: {missing} {unexpected}")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(str(directory))
    return directory


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def export_seqcls(directory: Path) -> tuple[Path, Path]:
    """fp32 ONNX of the peer model, and its `quantize_dynamic` QInt8 copy."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    fp32, int8 = directory / "model-fp32.onnx", directory / "model-int8.onnx"
    if not fp32.exists():
        model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        enc = tokenizer(["an example post", "another, longer example post for the trace"], padding=True,
                        return_tensors="pt")
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
        with torch.no_grad():
            torch.onnx.export(_Logits(model), tuple(enc[n] for n in names), str(fp32), dynamo=False,
                              input_names=names, output_names=["logits"], opset_version=17,
                              dynamic_axes={n: {0: "batch", 1: "seq"} for n in names} | {"logits": {0: "batch"}})
    if not int8.exists():
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return fp32, int8


# --- the variants -------------------------------------------------------------------------------------

Runner = Callable[..., int]   # run(texts=None) -> posts done; None: the bench's posts


def pipeline_runner(pipe, texts: list[str], batch: int) -> Runner:
    def run(subset: list[str] | None = None) -> int:
        subset = texts if subset is None else subset
        for out in pipe(subset, batch_size=batch, truncation=True, max_length=128):
            orjson.dumps(out)
        return len(subset)
    return run


def ort_runner(session, tokenizer, texts: list[str], batch: int) -> Runner:
    inputs = [i.name for i in session.get_inputs()]

    def run(subset: list[str] | None = None) -> int:
        subset = texts if subset is None else subset
        for start in range(0, len(subset), batch):
            enc = tokenizer(subset[start:start + batch], padding=True, truncation=True, max_length=128,
                            return_tensors="np")
            logits = session.run(None, {name: enc[name] for name in inputs})[0]
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            for row in probs:
                best = int(row.argmax())
                orjson.dumps({"label": LABELS[best], "score": float(row[best])})
        return len(subset)
    return run


def serving_runner(predictor, texts: list[str], batch: int) -> Runner:
    def run(subset: list[str] | None = None) -> int:
        return serve_in_micro_batches(predictor, [(text, "") for text in (texts if subset is None else subset)], batch)
    return run


def run_peers(model_dir: Path, root: Path, *, posts: int, batch_sizes: tuple[int, ...], rounds: int,
              say: Callable[[str], None]) -> dict:
    from affectstream.model.serving import choose_backend, load_predictor

    texts, source = peer_posts(posts)
    say(f"  peers: {len(texts)} posts ({source}), model {model_dir}; building the peer models ...")
    seqcls = build_seqcls(model_dir, root)
    fp32, int8 = export_seqcls(seqcls)
    import onnxruntime as ort
    from transformers import AutoTokenizer, pipeline

    pipe = pipeline("text-classification", model=str(seqcls), tokenizer=str(seqcls), dtype=torch.bfloat16, device=-1)
    tokenizer = AutoTokenizer.from_pretrained(str(seqcls))
    options = ort.SessionOptions()
    # threads wait passively in every variant (torch's via OMP_WAIT_POLICY, set by the bench), so the
    # comparison is about what each path computes, not about spinning on a shared host
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {name: ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
                for name, graph in (("ort-fp32", fp32), ("ort-int8", int8))}
    predictors = {backend: load_predictor(model_dir, backend, device="cpu") for backend in SERVING_BACKENDS}
    auto, why = choose_backend(model_dir, "cpu")
    variants: dict[str, Runner] = {}
    for b in batch_sizes:
        variants[f"pipeline-bf16@{b}"] = pipeline_runner(pipe, texts, b)
        for name, session in sessions.items():
            variants[f"{name}@{b}"] = ort_runner(session, tokenizer, texts, b)
        for backend, predictor in predictors.items():
            variants[f"serving-{backend}@{b}"] = serving_runner(predictor, texts, b)
    for name, run in variants.items():  # warm-up: first calls allocate and pick kernels
        b = int(name.rsplit("@", 1)[1])
        run(texts[:2 * b])
    say(f"  peers: timing {len(variants)} variants x {rounds} rounds, interleaved ...")
    timed = interleaved(variants, rounds)
    rows = {}
    for b in batch_sizes:
        peers = {name: timed[f"{name}@{b}"].posts_per_s for name in ("pipeline-bf16", "ort-fp32", "ort-int8")}
        serving = {backend: timed[f"serving-{backend}@{b}"].posts_per_s for backend in SERVING_BACKENDS}
        best_peer = max(peers, key=peers.get)
        rows[b] = {"peers": peers, "serving": serving, "best_peer": best_peer,
                   "ratio_auto": serving[auto] / peers[best_peer],
                   "ratio_best_serving": max(serving.values()) / peers[best_peer],
                   "spread": {name.rsplit("@", 1)[0]: timed[name].spread for name in variants
                              if name.endswith(f"@{b}")}}
    return {"model": str(model_dir), "posts": len(texts), "source": source, "auto_backend": auto,
            "auto_reason": why, "rows": rows, "predictors": predictors}


# --- peak resident memory of loading + serving, per backend, each in a fresh process ---------------

_RSS_SCRIPT = """
import json, sys
from affectstream.model.serving import load_predictor
model_dir, backend, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
from affectstream.bench.peers import peer_posts
texts, _ = peer_posts(n)
predictor = load_predictor(model_dir, backend, device="cpu")
for start in range(0, len(texts), 32):
    predictor.predict([(t, "") for t in texts[start:start + 32]])
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024, "rss_mb": int(status["VmRSS"].split()[0]) / 1024}))
"""


def serving_rss(model_dir: Path, backends: tuple[str, ...] = SERVING_BACKENDS, posts: int = 512) -> dict[str, dict]:
    """Peak RSS (VmHWM) of a process that loads the model on `backend` and serves `posts` posts at batch 32.
    The graphs are put in the cache first, so no export is counted (a serving process exports in a child
    anyway: model.serving.export_in_child)."""
    from affectstream.model.config import AlignedConfig
    from affectstream.model.onnx_export import ensure_onnx

    k = AlignedConfig.from_pretrained(str(model_dir)).top_k
    for precision in ("fp32", "int8"):
        ensure_onnx(model_dir, precision, k)
    out = {}
    for backend in backends:
        proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(model_dir), backend, str(posts)],
                              capture_output=True, text=True, timeout=600, env=os.environ.copy())
        if proc.returncode != 0:
            out[backend] = {"error": proc.stderr.strip()[-400:]}
            continue
        out[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# --- table and goals ------------------------------------------------------------------------------------

GOAL_RATIO = 1.2          # serving >= 1.2x the best peer at every batch size >= 8
GOAL_FORWARD_SHARE = 0.30 # forward >= 30% of the FFN-shape matmul peak of its precision
GOAL_RSS_MB = 800         # loading + serving, peak resident set


def peers_table(p: dict) -> list[str]:
    lines = [f"peers — {p['model']}, {p['posts']} posts ({p['source']}), posts/s. Peers: tokenise → forward → label "
             "→ JSON, batches padded to their longest post; serving: tokenise → forward → top-K → rationale → JSON, "
             "length buckets inside each batch",
             f"auto picks {p['auto_backend']} here: {p['auto_reason']}",
             "| batch | pipeline bf16 | ORT fp32 | ORT int8 | serving torch | serving onnx-fp32 | serving onnx-int8 | "
             f"serving {p['auto_backend']} / best peer | worst spread |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b, row in p["rows"].items():
        peers, serving = row["peers"], row["serving"]
        lines.append(f"| {b} | {peers['pipeline-bf16']:.0f} | {peers['ort-fp32']:.0f} | {peers['ort-int8']:.0f} | "
                     f"{serving['torch']:.0f} | {serving['onnx-fp32']:.0f} | {serving['onnx-int8']:.0f} | "
                     f"{row['ratio_auto']:.2f}x ({row['best_peer']}) | {100 * max(row['spread'].values()):.0f}% |")
    f = p.get("forward")
    if f:
        lines.append(f"forward only ({f['forward_backend']}) @ batch {f['forward_batch']}: {f['forward_posts_per_s']:.0f} "
                     f"posts/s, {f['forward_gflops']:.0f} GFLOP/s useful ({f['tokens_per_post']:.1f} real tokens/post, "
                     f"padding {100 * f['padding_share']:.0f}%) = {100 * f['forward_share']:.0f}% of the "
                     f"{f['peak_key']} peak ({f['peak_gflops']:.0f})")
    rss = p.get("rss_mb")
    if rss:
        lines.append("loading + serving 512 posts, peak RSS (VmHWM) per process: " + ", ".join(
            f"{backend} {v['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in v else f"{backend} failed: {v['error'][-120:]}"
            for backend, v in rss.items()))
    gate = p.get("int8_gate")
    if gate:
        lines.append(gate["card_line"])
    lines.append("")
    return lines


def peer_targets(p: dict) -> list[dict]:
    out = []
    for b, row in p["rows"].items():
        if int(b) >= 8:
            value = row["ratio_auto"]
            out.append({"target": f"serving ({p['auto_backend']}) / best peer ({row['best_peer']}) @ batch {b}",
                        "value": round(value, 3), "goal": GOAL_RATIO, "unit": "x", "met": value >= GOAL_RATIO})
    f = p.get("forward")
    if f:
        out.append({"target": f"forward ({f['forward_backend']}) @ {f['forward_batch']} / {f['peak_key']} peak",
                    "value": round(f["forward_share"], 3), "goal": GOAL_FORWARD_SHARE, "unit": "share",
                    "met": f["forward_share"] >= GOAL_FORWARD_SHARE})
    for backend, v in p.get("rss_mb", {}).items():
        if "peak_rss_mb" in v:
            out.append({"target": f"loading + serving peak RSS, {backend}" + (" (auto)" if backend == p["auto_backend"]
                                                                              else ""),
                        "value": round(v["peak_rss_mb"]), "goal": GOAL_RSS_MB, "unit": "MB, at most",
                        "met": v["peak_rss_mb"] <= GOAL_RSS_MB})
    return out
