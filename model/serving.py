"""Serving backends behind the one predictor interface: `load_predictor(model_dir, backend=...)`.

    torch       BatchPredictor: eager torch, bf16 with oneDNN pre-packed linears where the CPU has bf16
                units (AMX / AVX512-BF16), else fp32; the only backend on a GPU
    onnx-fp32   the same forward exported to ONNX (model/onnx_export.py), run by ONNX Runtime
    onnx-int8   that graph with ONNX Runtime's dynamic int8 quantisation (QInt8 weights)
    auto        per machine: onnx-int8 where the CPU has int8 dot-product units (AMX-INT8, AVX512-VNNI,
                AVX-VNNI) AND the model directory's int8 quality gate passed; otherwise torch where the CPU
                has bf16 units or a GPU is used, else onnx-fp32

Every backend is a `PairPredictor`: tokenisation, length bucketing, top-K decoding and the rationale are
the predictor's own code (model/predictor.py); a backend only supplies the forward pass. The ONNX backends
also run a micro-batch's length buckets as concurrent calls of their session ("lanes", `OnnxPredictor`).

The int8 quality gate (written by `affectstream bench --int8-gate MODEL_DIR`, training/int8_gate.py) is a
JSON file, `int8_gate.json` in the model directory (or, when that is read-only, under
``$AFFECTSTREAM_CACHE/gates/``), holding the weights' hash and the export recipe it was measured with: a
gate measured on other weights or another int8 recipe does not count.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from affectstream.model.config import AlignedConfig
from affectstream.model.device import cpu_flags
from affectstream.model.onnx_export import EXPORT_RECIPE, cache_root, cached_onnx, ensure_onnx, weights_hash
from affectstream.model.predictor import BatchPredictor, ForwardOutputs, PairPredictor, Prediction
from affectstream.model.tokenization import EncodedPairs

BACKENDS = ("torch", "onnx-fp32", "onnx-int8", "auto")
GATE_FILE = "int8_gate.json"
GATE_TOLERANCE = 0.005        # int8 macro-F1 at most 0.5 points below the torch model's on every gate set
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# Not disabled: ONNX Runtime's SkipLayerNormFusion. Its fused kernel took 10x the time of the plain
# LayerNormalization (829 vs 84 us per node at batch 16, 17 % of the int8 forward) and unfused the forward
# was 13 % faster, but the unfused float rounding moved enough int8 activations across quantisation steps to
# fail the int8 gate (VADER macro-F1 -0.55 points against bf16, fused -0.04): speed that the gate refuses.
# an ONNX Runtime call costs well under a millisecond, so length buckets may be smaller than torch's
ONNX_MIN_BUCKET = 4


def onnx_feeds(batch: EncodedPairs, input_names: list[str], top_k: int, tokenizer) -> dict[str, np.ndarray]:
    """An encoded batch as the ONNX graph's inputs. A batch shorter than K tokens is padded to K with masked,
    unselectable positions: the graph's top-K needs K positions (model/onnx_export.py)."""
    feeds = {name: tensor.numpy() for name, tensor in batch.model_inputs().items() if name in input_names}
    seq = batch.input_ids.shape[1]
    if seq < top_k:
        pad_ids = {"input_ids": tokenizer.pad_token_id, "token_type_ids": tokenizer.pad_token_type_id}
        feeds = {name: np.pad(array, ((0, 0), (0, top_k - seq)), constant_values=pad_ids.get(name, 0))
                 for name, array in feeds.items()}
    return feeds


def cpu_isa() -> dict[str, bool]:
    """The matrix-unit flags that decide the backend, as the bench records them."""
    flags = cpu_flags()
    return {flag: flag in flags for flag in ("amx_int8", "amx_bf16", "avx512_bf16", "avx512_vnni", "avx_vnni")}


class OnnxPredictor(PairPredictor):
    """The aligned model's ONNX graph (fp32 or dynamic int8) in an ONNX Runtime CPU session."""

    min_bucket = ONNX_MIN_BUCKET

    def __init__(self, session, tokenizer, config: AlignedConfig, *, precision: str, top_k: int, batch_size: int,
                 version: str, graph: Path, lanes: int = 1):
        super().__init__(tokenizer, config, top_k=top_k, batch_size=batch_size, version=version)
        self.session = session
        # lanes: the chunks of a micro-batch run at once, each its own call of the one session
        self.lanes = max(1, lanes)
        self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="onnx-lane") if self.lanes > 1 else None
        self.precision = precision
        self.backend = f"onnx-{precision}"
        self.graph = graph
        self.device = torch.device("cpu")
        self._inputs = [i.name for i in session.get_inputs()]
        self._outputs = [o.name for o in session.get_outputs()]

    @classmethod
    def from_directory(cls, path: str | Path, precision: str = "int8", threads: int = 0, top_k: int | None = None,
                       batch_size: int = 64, lanes: int = 0) -> "OnnxPredictor":
        from transformers import AutoTokenizer

        config = AlignedConfig.from_pretrained(str(path))
        k = top_k or config.top_k
        graph = export_in_child(path, precision, k)
        lanes = lanes or threads or available_cores()  # lanes 1: one call per chunk, every core inside it
        session = cls._session(graph, threads)
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
        version = config.version if config.version != "untrained" else f"untrained:{Path(path).name}"
        return cls(session, tokenizer, config, precision=precision, top_k=k, batch_size=batch_size,
                   version=version, graph=graph, lanes=lanes)

    @staticmethod
    def _session(graph: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # idle threads sleep instead of spinning: on a host whose cores are shared (other workers, the
        # broker) spinning threads steal the cores the busy ones need, as OpenMP's do (bench/cli.py)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def _run_chunks(self, chunks: list[list[tuple[str, str]]], marked: str) -> Iterable[list[Prediction]]:
        """Several chunks: one call per chunk, `lanes` calls of the session at once (ONNX Runtime releases the
        GIL and a session may run concurrently). On small batches this beats one call spreading each
        operator over the cores, whose per-op hand-offs cost more than the work: 1.29x / 1.14x / 1.07x
        posts/s at batch 8 / 32 / 64 on 2 cores (interleaved A/B). Concurrent calls of one session did as
        well as a second, single-threaded session (897 vs 875 posts/s at batch 8, 906 vs 937 at 32), which
        cost 78 MB more in the classify worker, so there is one."""
        if self._pool is None or len(chunks) < 2:
            return super()._run_chunks(chunks, marked)
        # longest work first, so the last chunk to start is a short one (chunks arrive shortest first)
        futures = {i: self._pool.submit(self._predict_batch, chunks[i], marked)
                   for i in sorted(range(len(chunks)), key=lambda i: -chunk_cost(chunks[i]))}
        return [futures[i].result() for i in range(len(chunks))]

    def _forward(self, batch: EncodedPairs) -> ForwardOutputs:
        seq = batch.input_ids.shape[1]
        feeds = onnx_feeds(batch, self._inputs, self.top_k, self.tokenizer)
        out = dict(zip(self._outputs, self.session.run(self._outputs, feeds)))
        # padded positions are never valid; clamp them so decoding's gathers stay inside the batch
        selected_idx = torch.from_numpy(np.minimum(out["selected_idx"], seq - 1))
        emotion = out.get("emotion_logits")
        return ForwardOutputs(
            sentiment_logits=torch.from_numpy(out["sentiment_logits"]),
            emotion_logits=None if emotion is None else torch.from_numpy(emotion),
            selected_idx=selected_idx,
            selected_scores=torch.from_numpy(out["selected_scores"]),
            selected_valid=torch.from_numpy(out["selected_valid"]),
        )


def chunk_cost(chunk: list[tuple[str, str]]) -> int:
    """A chunk's padded size in characters: its posts times its longest pair (the work of its call)."""
    return len(chunk) * max(len(text) + len(description) for text, description in chunk)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def export_in_child(model_dir: str | Path, precision: str, top_k: int) -> Path:
    """The cached graph; on a miss it is exported by a child process, so the serving process never holds
    the torch model and the tracer's copies (its peak RSS stays that of serving)."""
    cached = cached_onnx(model_dir, precision, top_k)
    if cached is not None:
        return cached
    proc = subprocess.run([sys.executable, "-m", "affectstream.model.onnx_export", str(model_dir), precision,
                           str(top_k)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ONNX export of {model_dir} failed: {proc.stderr.strip()[-800:]}")
    return ensure_onnx(model_dir, precision, top_k)


# --- the int8 quality gate --------------------------------------------------------------------------

def gate_paths(model_dir: str | Path) -> list[Path]:
    """Where a gate result may live: next to the model, then the cache (for read-only model directories)."""
    return [Path(model_dir) / GATE_FILE, cache_root() / "gates" / f"{weights_hash(model_dir)[:24]}.json"]


def read_gate(model_dir: str | Path) -> dict | None:
    """The gate result measured on these very weights with this export recipe, or None."""
    current = weights_hash(model_dir)
    for path in gate_paths(model_dir):
        try:
            gate = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(gate, dict) and gate.get("weights_hash") == current and gate.get("recipe") == EXPORT_RECIPE:
            return gate
    return None


def write_gate(model_dir: str | Path, gate: dict) -> Path:
    """Next to the model when the directory is writable, else in the cache; returns where."""
    text = json.dumps(gate, indent=2)
    for path in gate_paths(model_dir):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return path
        except OSError:
            continue
    raise OSError(f"could not write the int8 gate for {model_dir} (model directory and cache are read-only)")


def gate_passed(model_dir: str | Path) -> bool:
    gate = read_gate(model_dir)
    return bool(gate and gate.get("passed") is True)


# --- choosing and loading ----------------------------------------------------------------------------

def choose_backend(model_dir: str | Path, device: str = "auto") -> tuple[str, str]:
    """What `auto` resolves to on this machine for this model, and why (one line for the log)."""
    from affectstream.model.device import pick_device

    if pick_device(device).type != "cpu":
        return "torch", "a GPU is used: ONNX Runtime runs on the CPU here"
    flags = cpu_flags()
    int8_units = [flag for flag in INT8_FLAGS if flag in flags]
    bf16_units = [flag for flag in BF16_FLAGS if flag in flags]
    if int8_units:
        if gate_passed(model_dir):
            return "onnx-int8", f"int8 units ({', '.join(int8_units)}) and the int8 quality gate passed"
        reason = "int8 gate not passed or not measured for these weights (affectstream bench --int8-gate)"
    else:
        reason = "no int8 dot-product units (AMX-INT8 / AVX512-VNNI / AVX-VNNI)"
    if bf16_units:
        return "torch", f"{reason}; bf16 units ({', '.join(bf16_units)}): torch bf16"
    return "onnx-fp32", f"{reason}; no bf16 units: ONNX Runtime fp32"


def load_predictor(model_dir: str | Path, backend: str = "torch", *, device: str = "auto", threads: int = 0,
                   top_k: int | None = None, batch_size: int = 64, dtype: str = "auto",
                   lanes: int = 0) -> PairPredictor:
    """A predictor for a deployed directory on `backend` (one of BACKENDS). `device` and `dtype` are the
    torch backend's (model/device.py); the ONNX backends run on the CPU, `lanes` chunks of a micro-batch at
    once (0: `threads`, else one per available core; 1: off)."""
    backend = str(backend).strip().lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown inference backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    reason, automatic = "set explicitly", backend == "auto"
    if automatic:
        backend, reason = choose_backend(model_dir, device)
    if backend != "torch" and str(device).strip().lower() not in ("auto", "cpu"):
        raise ValueError(f"inference backend {backend!r} runs on the CPU; got device {device!r} (use backend torch)")
    if backend != "torch":
        try:
            predictor: PairPredictor = OnnxPredictor.from_directory(
                model_dir, precision=backend.split("-", 1)[1], threads=threads, top_k=top_k, batch_size=batch_size,
                lanes=lanes)
        except (RuntimeError, OSError, ImportError) as e:
            if not automatic:  # asked for by name: the caller hears why it cannot be had
                raise
            # `auto` only chose it for speed: a failed export (a read-only cache, a broken ONNX Runtime) must
            # not stop a worker that torch can serve
            reason = f"{reason}; {backend} failed to load ({type(e).__name__}: {str(e)[:200]}), so torch"
            backend = "torch"
    if backend == "torch":
        predictor = BatchPredictor.from_directory(model_dir, device=device, threads=threads, top_k=top_k, dtype=dtype,
                                                  batch_size=batch_size)
    lanes = f"; {predictor.lanes} lanes (AFFECTSTREAM_ONNX_LANES)" if predictor.lanes > 1 else ""
    predictor.backend_reason = reason + lanes  # one line for the stage's start-up log
    return predictor
