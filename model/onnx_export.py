"""The deployed aligned model as ONNX graphs: fp32, and dynamic int8 (ONNX Runtime's `quantize_dynamic`).

What is exported is whatever `AlignedClassifier.forward` computes (encoder → scorer → top-K → pooling →
heads), traced through the model's own forward; nothing here re-implements the method, so a change of the
method is exported as it is. The graph takes the predictor's own `EncodedPairs.model_inputs()` and returns
the fields of `AlignedOutput` the serving decode reads (`OUTPUTS`), so tokenisation, bucketing and the
rationale stay the predictor's (model/predictor.py); only the forward runs in ONNX Runtime.

Details of the trace:
- K is baked in (`top_k`), and top-K over fewer than K positions has no answer in ONNX: the serving side
  pads every batch to at least K positions with masked, unselectable padding. Those positions score -inf,
  come back invalid and get zero pooling weight, so outputs equal the eager model's.
- int8 covers the encoder's linear layers (MatMul with a constant weight). The scorer and the heads stay
  fp32 (`nodes_to_exclude`): they are < 1% of the FLOPs, and the scorer's ranking is the rationale. The
  embedding tables stay fp32 too: a lookup has no arithmetic to save, and quantising them changed more
  labels than all the linear layers together (below).
- Dynamic quantisation scales activations per tensor, over the whole batch: an int8 label can depend on
  which posts share the batch (as with any `quantize_dynamic` graph). The quality gate
  (training/int8_gate.py) measures it served the way the classify stage serves it.

Files are cached under ``$AFFECTSTREAM_CACHE/onnx/<key>/`` (deployed model directories may be read-only),
keyed by the weights' and config's sha256, K, the exporter's versions and the forward's source: new weights
or a changed method never meet a stale graph. Files are written under a temporary name and renamed, so two workers exporting at once are safe.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from affectstream.model.aligned import AlignedClassifier
from affectstream.model.deploy import CONFIG_FILE, WEIGHTS_FILE, load_deployed
from affectstream.model.tokenization import encode_pairs

EXPORT_RECIPE = "aligned-onnx-v3"   # bump when the graph's inputs, outputs or the export options change
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "selectable", "token_type_ids")
OUTPUTS = ("sentiment_logits", "emotion_logits", "selected_idx", "selected_scores", "selected_valid")
PRECISIONS = ("fp32", "int8")
# node-name prefixes left in fp32 by the int8 quantisation (module paths as the tracer names nodes)
FP32_MODULES = ("/model/scorer/", "/model/sentiment_head/", "/model/emotion_head/")


def cache_root() -> Path:
    """``$AFFECTSTREAM_CACHE`` (default ``~/.cache/affectstream``), as the dataset downloads use."""
    return Path(os.environ.get("AFFECTSTREAM_CACHE") or Path.home() / ".cache" / "affectstream")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_hash(model_dir: str | Path) -> str:
    """sha256 over the deployed directory's weights and config: what decides the exported graph."""
    model_dir = Path(model_dir)
    return hashlib.sha256((file_sha256(model_dir / WEIGHTS_FILE) + file_sha256(model_dir / CONFIG_FILE)).encode()
                          ).hexdigest()


def export_key(model_dir: str | Path, top_k: int) -> str:
    """Weights + config, K, the exporter's versions and the source of the forward being traced (a change
    of the method's code with the same weights must not meet a graph traced from the old code)."""
    import inspect

    import onnxruntime
    import transformers

    from affectstream.model import aligned

    forward_source = hashlib.sha256(inspect.getsource(aligned).encode()).hexdigest()
    recipe = (f"{EXPORT_RECIPE}|k={top_k}|torch={torch.__version__}|transformers={transformers.__version__}"
              f"|ort={onnxruntime.__version__}|opset={OPSET}|forward={forward_source}")
    return hashlib.sha256(f"{weights_hash(model_dir)}|{recipe}".encode()).hexdigest()[:24]


class _Traced(nn.Module):
    """The model's own forward with AlignedOutput flattened to the tuple ONNX needs (`OUTPUTS` order; no
    emotion_logits when the model has no emotion head)."""

    def __init__(self, model: AlignedClassifier, top_k: int):
        super().__init__()
        self.model, self.top_k = model, top_k

    def forward(self, input_ids, attention_mask, selectable, token_type_ids=None):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, selectable=selectable,
                         token_type_ids=token_type_ids, top_k=self.top_k)
        heads = (out.sentiment_logits,) + ((out.emotion_logits,) if out.emotion_logits is not None else ())
        return heads + (out.selected_idx, out.selected_scores, out.selected_valid)


def export_fp32(model: AlignedClassifier, tokenizer, top_k: int, path: Path) -> Path:
    """Trace `model` (fp32, eval) into `path` with dynamic batch and sequence axes."""
    model = model.float().eval()
    # eager attention traces to MatMul + Add(mask) + Softmax; SDPA's trace adds a NaN guard (IsNaN, Where)
    # per layer: 45 fewer nodes, 3.5 % more posts/s through the int8 graph at batch 4-16 (same outputs)
    model.encoder.set_attn_implementation("eager")
    # an example longer than K on both sides, so the trace takes the general path of every op
    text = "the example post that shapes the trace, long enough for every selected token " * 3
    description = "objects: coffee mug. scene: warm colours"
    batch = encode_pairs(tokenizer, [text, text[:40]], [description, ""], model.config.max_length)
    inputs = batch.model_inputs()
    names = [name for name in INPUTS if name in inputs]
    outputs = [name for name in OUTPUTS if name != "emotion_logits" or model.emotion_head is not None]
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # the tracer warns that Python-level shape decisions (K = min(K, T), the attention-mask padding check)
        # become constants: expected, and handled by padding to K on the serving side (module docstring)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Traced(model, top_k), tuple(inputs[name] for name in names), str(path), dynamo=False,
            input_names=names, output_names=outputs, opset_version=OPSET, do_constant_folding=True,
            dynamic_axes={name: {0: "batch", 1: "seq"} for name in names}
            | {name: {0: "batch"} for name in outputs})
    return path


def quantize_int8(fp32_path: Path, int8_path: Path) -> Path:
    """Dynamic int8 of every weight MatMul outside the scorer and heads: QInt8 weights with one scale per
    output channel, activations quantised per call (one scale per tensor, so over the whole batch).

    Measured with the default model against its torch bf16 labels (VADER / Twitter-2015 / Twitter-2017
    test): one scale per weight tensor, embeddings quantised: 95.0% of VADER labels agree; per channel,
    embeddings quantised: 97.6 / 97.5 / 97.3% agree, macro-F1 +0.87 / +0.29 / -0.72 points; per channel,
    embeddings fp32 (this): 97.6 / 98.0 / 97.7%, macro-F1 +0.12 / -0.05 / +0.21 points."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    keep_fp32 = [node.name for node in graph.node if node.name.startswith(FP32_MODULES)]
    # the quantiser first rewrites a Gemm (a head) as "<name>_MatMul" + "<name>_Add": exclude that name too
    keep_fp32 += [f"{node.name}_MatMul" for node in graph.node if node.op_type == "Gemm" and node.name in keep_fp32]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser advises its shape pre-processing, which fails on this graph
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=keep_fp32)
    finally:
        root.setLevel(level)
    return int8_path


def _write_atomically(directory: Path, name: str, build) -> Path:
    """build(tmp_path) then rename into place: a reader never sees a half-written graph."""
    final = directory / name
    with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as tmp:
        built = build(Path(tmp) / name)
        os.replace(built, final)
    return final


def graph_paths(model_dir: str | Path, top_k: int) -> dict[str, Path]:
    directory = cache_root() / "onnx" / export_key(model_dir, top_k)
    return {"fp32": directory / "model-fp32.onnx", "int8": directory / "model-int8.onnx"}


def cached_onnx(model_dir: str | Path, precision: str, top_k: int) -> Path | None:
    path = graph_paths(model_dir, top_k)[precision]
    return path if path.is_file() else None


def ensure_onnx(model_dir: str | Path, precision: str = "fp32", top_k: int | None = None) -> Path:
    """The cached ONNX graph of a deployed directory at `precision`, exported (and quantised) on a miss.

    `top_k`: None → the model's own K."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model_dir = Path(model_dir)
    from affectstream.model.config import AlignedConfig

    k = top_k or AlignedConfig.from_pretrained(str(model_dir)).top_k
    paths = graph_paths(model_dir, k)
    fp32, int8 = paths["fp32"], paths["int8"]
    directory = fp32.parent
    wanted = fp32 if precision == "fp32" else int8
    if wanted.is_file():
        return wanted
    directory.mkdir(parents=True, exist_ok=True)
    if not fp32.is_file():
        model, tokenizer, _ = load_deployed(model_dir)
        _write_atomically(directory, fp32.name, lambda tmp: export_fp32(model, tokenizer, k, tmp))
        del model
        (directory / "source.json").write_text(json.dumps(
            {"model_dir": str(model_dir.resolve()), "weights_hash": weights_hash(model_dir), "top_k": k,
             "recipe": EXPORT_RECIPE}, indent=2))
    if precision == "int8" and not int8.is_file():
        _write_atomically(directory, int8.name, lambda tmp: quantize_int8(fp32, tmp))
    return wanted


if __name__ == "__main__":  # python -m affectstream.model.onnx_export MODEL_DIR [fp32|int8 [K]]: fill the cache
    import sys

    print(ensure_onnx(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "int8",
                      int(sys.argv[3]) if len(sys.argv) > 3 else None))
