"""Batch predictor for serving: (post text, image description) pairs -> labels, scores, rationales.

`PairPredictor` is everything around the forward pass that every serving backend shares: tokenisation,
length bucketing, target marking, top-K decoding and the rationale. `BatchPredictor` is the torch backend;
model/serving.py adds the ONNX Runtime ones (fp32, int8) and `load_predictor`, which picks between them.

Fast on CPUs by construction:
- pairs are sorted by length and each micro-batch is split into length buckets whose padding stays
  under `MAX_PADDING` (a tweet batch padded to its longest post is ~half padding); padding is dynamic;
- the model runs under `torch.inference_mode`;
- on CPUs with bf16 matrix units (AMX / AVX512-BF16) the weights are cast to bf16 once (no per-call
  autocast casts), and every `nn.Linear` becomes one oneDNN matmul primitive with its weight pre-packed
  in the blocked layout the AMX kernels read, the bias applied inside the kernel, and the GELU after an
  encoder's intermediate projection fused into it (`pack_linears`). Measured on 2 AMX cores: a plain bf16
  `F.linear` reaches 60-215 GFLOP/s on the encoder's shapes, because it copies the broadcast bias into
  the output and re-lays out the weight on every call; the packed primitive reaches 110-430 GFLOP/s on
  the same shapes, which made bf16 serving barely faster than fp32 before and ~2x faster after.
- a packed primitive's rows (batch x tokens) are padded up to a few fixed sizes (`padded_rows`): oneDNN
  builds and caches a kernel per shape, and a worker sees every batch size times every bucket length.
  Serving the same 1,024 tweets at batch 1, 8, 32 and 64 (with and without descriptions), the process grew
  from 529 MB loaded to 1,029 MB unpadded and to 645 MB padded; at most 8 sizes per doubling exist, the
  padding adds under max(32, rows / 8) rows, and it cost 5-7 % of posts/s in that A/B (534 -> 504 at
  batch 8, 655 -> 612 at batch 32).
"""
from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from affectstream.model.aligned import AlignedClassifier, AlignedOutput
from affectstream.model.config import AlignedConfig
from affectstream.model.deploy import load_deployed
from affectstream.model.device import pick_device, pick_dtype
from affectstream.model.rationale import RationaleWord, TokenSpan, merge_to_words
from affectstream.model.targets import TargetInput, mark_target
from affectstream.model.tokenization import SOURCE_NAMES, EncodedPairs, encode_pairs


@dataclass
class Prediction:
    label: str
    scores: dict[str, float]
    emotion: dict | None                  # {"label", "scores"} when the model has an emotion head
    rationale: list[RationaleWord] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "scores": self.scores,
            "emotion": self.emotion,
            # the same dict as RationaleWord.to_dict(), without dataclasses.asdict's deep copy (~4x faster)
            "rationale": [{"text": w.text, "score": w.score, "source": w.source} for w in self.rationale],
        }


# --- oneDNN pre-packed linear layers ---------------------------------------------------------------

def _exact_gelu(module: nn.Module) -> bool:
    """nn.GELU() or Hugging Face's GELUActivation (erf GELU, as BERT and RoBERTa use): fusable."""
    if isinstance(module, nn.GELU):
        return module.approximate == "none"
    return type(module).__name__ == "GELUActivation" and getattr(module, "act", None) is F.gelu


ROW_QUANTUM = 32   # the smallest padding step of a packed primitive's rows


def padded_rows(rows: int) -> int:
    """`rows` rounded up to a multiple of max(32, 2^(bit_length - 4)): at most 8 sizes per doubling, so a
    worker meets a bounded set of shapes whatever its batches; the padding is under max(32, rows / 8)."""
    quantum = max(ROW_QUANTUM, 1 << max(0, rows.bit_length() - 4))
    return -(-rows // quantum) * quantum


class PackedLinear(nn.Module):
    """`nn.Linear` (+ optional exact GELU) as one oneDNN primitive over a pre-packed weight. CPU only;
    built from a Linear whose weights already have the serving dtype; inference only (no autograd)."""

    def __init__(self, linear: nn.Linear, gelu: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, None))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.attr, self.algorithm = ("gelu", "none") if gelu else ("none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        n = rows.shape[0]
        rows = F.pad(rows, (0, 0, 0, padded_rows(n) - n))  # one of a bounded set of shapes (module docstring)
        y = torch.ops.mkldnn._linear_pointwise(rows.contiguous(), self.packed_weight, self.bias, self.attr, [],
                                                self.algorithm)
        return y[:n].view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused={self.attr}"


@functools.cache
def packed_linear_works(dtype: torch.dtype) -> bool:
    """Whether this torch build has the oneDNN linear kernels for `dtype`, and they agree with F.linear."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        gen = torch.Generator().manual_seed(0)
        linear = nn.Linear(64, 48).to(dtype)
        x = torch.randn(5, 64, generator=gen).to(dtype)
        with torch.inference_mode():
            for gelu in (False, True):
                expected = F.linear(x, linear.weight, linear.bias).float()
                expected = F.gelu(expected) if gelu else expected
                got = PackedLinear(linear, gelu=gelu)(x).float()
                if not torch.allclose(got, expected, atol=5e-2, rtol=5e-2):
                    return False
        return True
    except (RuntimeError, AttributeError):
        return False


def pack_linears(model: nn.Module) -> int:
    """Replace, in place, every nn.Linear under `model` by a PackedLinear; a Linear directly followed
    by an exact GELU (HF `*Intermediate.dense` → `intermediate_act_fn`, or Linear → GELU inside an
    nn.Sequential) gets the GELU fused and the activation becomes nn.Identity. Returns how many."""
    packed = 0
    for parent in list(model.modules()):
        if isinstance(parent, PackedLinear):
            continue
        # fusable pairs first
        if isinstance(getattr(parent, "dense", None), nn.Linear) and _exact_gelu(getattr(parent, "intermediate_act_fn", None)):
            parent.dense = PackedLinear(parent.dense, gelu=True)
            parent.intermediate_act_fn = nn.Identity()
            packed += 1
        if isinstance(parent, nn.Sequential):
            for i in range(len(parent) - 1):
                if isinstance(parent[i], nn.Linear) and _exact_gelu(parent[i + 1]):
                    parent[i], parent[i + 1] = PackedLinear(parent[i], gelu=True), nn.Identity()
                    packed += 1
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, PackedLinear(child))
                packed += 1
    return packed


# --- length bucketing ---------------------------------------------------------------------------------

MIN_BUCKET = 8        # posts: below this a bucket's per-call overhead outweighs the padding it saves
MAX_PADDING = 0.25    # a bucket grows while its padded size stays within 1.25x its real size
SPECIAL_CHARS = 12    # a pair's special tokens, in characters (lengths are estimated from characters)


def length_buckets(lengths: list[int], batch_size: int, min_size: int = MIN_BUCKET,
                   max_padding: float = MAX_PADDING) -> list[tuple[int, int]]:
    """[start, end) ranges over `lengths` (sorted ascending) of at most `batch_size` items each, a range
    closed when adding the next (longest so far) item would pad it past `max_padding` (once it holds
    `min_size` items)."""
    ranges, start, total = [], 0, 0
    for i, length in enumerate(lengths):
        n = i - start + 1
        if n > batch_size or (n > min_size and n * length > (1 + max_padding) * (total + length)):
            ranges.append((start, i))
            start, total = i, 0
        total += length
    if start < len(lengths):
        ranges.append((start, len(lengths)))
    return ranges


def spread_chunks(chunks: list[list[int]], lanes: int) -> list[list[int]]:
    """`chunks` with the largest split in halves until there are at least `lanes` of them (or none holds
    two items), so each of a backend's parallel lanes gets a share of a micro-batch. Order is kept."""
    chunks = [list(c) for c in chunks if c]
    while len(chunks) < lanes:
        largest = max(range(len(chunks)), key=lambda i: len(chunks[i]), default=None)
        if largest is None or len(chunks[largest]) < 2:
            break
        c = chunks[largest]
        chunks[largest:largest + 1] = [c[:len(c) // 2], c[len(c) // 2:]]
    return chunks


def softmax_rows(logits: torch.Tensor) -> list[list[float]]:
    """Row-wise softmax of a small (B, classes) tensor in numpy: torch's op wakes its thread pool, which
    cost ~2 ms per call on a busy 2-core host (measured), several times the whole decode of a post."""
    x = logits.float().numpy()
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).tolist()


@dataclass
class ForwardOutputs:
    """What a backend's forward pass hands the shared decoding, as CPU tensors (AlignedOutput's fields)."""
    sentiment_logits: torch.Tensor          # (B, n_sentiment)
    emotion_logits: torch.Tensor | None     # (B, n_emotion)
    selected_idx: torch.Tensor              # (B, K) token positions inside the batch's sequence
    selected_scores: torch.Tensor           # (B, K)
    selected_valid: torch.Tensor            # (B, K) bool


class PairPredictor(ABC):
    """The serving interface (`predict`, `predict_targets`, `target_aware`, `config`, `version`) and the
    pre/post-processing every backend shares; a backend implements `_forward`."""

    backend = ""
    min_bucket = MIN_BUCKET   # a backend with a cheaper call (ONNX Runtime) splits batches finer
    lanes = 1                 # chunks of a micro-batch a backend runs at once (`_run_chunks`)

    def __init__(self, tokenizer, config: AlignedConfig, *, top_k: int | None = None, batch_size: int = 64,
                 version: str | None = None):
        self.tokenizer = tokenizer
        self.config = config
        self.top_k = top_k or config.top_k
        self.batch_size = batch_size
        self.version = version or config.version

    @abstractmethod
    def _forward(self, batch: EncodedPairs) -> ForwardOutputs:
        """One encoded micro-batch through the backend's model."""

    @property
    def target_aware(self) -> bool:
        """Whether the deployed model was trained with targets marked in the text (`model.targets`)."""
        return bool(getattr(self.config, "target_format", ""))

    def predict(self, pairs: list[tuple[str, str]]) -> list[Prediction]:
        """Predictions in input order; internally grouped into length-sorted micro-batches."""
        return self._predict_sorted([(text or "", description or "") for text, description in pairs], marked="")

    def predict_targets(self, items: list[TargetInput]) -> list[Prediction]:
        """One prediction per (post, target), in input order: the sentiment toward `item.target`.

        A target-aware model reads the text with the target marked (`mark_target`, as in training); its
        rationale words are the post's own words and the description's, never the markers. A model that
        is not target-aware gives every target its post's post-level prediction (computed once per
        distinct post), so per-target counts equal today's post-level counts.
        """
        if not self.target_aware:
            pairs = [(item.text or "", item.description or "") for item in items]
            distinct = list(dict.fromkeys(pairs))
            by_pair = dict(zip(distinct, self.predict(distinct)))
            return [dataclasses.replace(by_pair[pair]) for pair in pairs]  # a copy each: callers may annotate them
        target_format = self.config.target_format
        pairs = [(mark_target(item.text or "", item.target, item.spans, target_format), item.description or "")
                 for item in items]
        return self._predict_sorted(pairs, marked=target_format)

    def _predict_sorted(self, pairs: list[tuple[str, str]], marked: str) -> list[Prediction]:
        lengths = [len(text) + len(description) + SPECIAL_CHARS for text, description in pairs]
        order = sorted(range(len(pairs)), key=lengths.__getitem__)
        chunks = [order[start:end]
                  for start, end in length_buckets([lengths[i] for i in order], self.batch_size, self.min_bucket)]
        if self.lanes > 1:
            chunks = spread_chunks(chunks, self.lanes)
        results: list[Prediction | None] = [None] * len(pairs)
        for chunk, predictions in zip(chunks, self._run_chunks([[pairs[i] for i in c] for c in chunks], marked)):
            for i, prediction in zip(chunk, predictions):
                results[i] = prediction
        return results  # type: ignore[return-value]

    def _run_chunks(self, chunks: list[list[tuple[str, str]]], marked: str) -> Iterable[list[Prediction]]:
        """Each chunk's predictions, in order: one micro-batch call after another (a backend with
        parallel lanes overrides this)."""
        return (self._predict_batch(chunk, marked) for chunk in chunks)

    def forward_parts(self, parts: list[EncodedPairs]) -> list[ForwardOutputs]:
        """The forward pass alone over encoded parts of one micro-batch, as serving runs them (the bench
        times it): one after another here, at once on a backend with lanes."""
        return [self._forward(part) for part in parts]

    def encode(self, pairs: list[tuple[str, str]], marked: str = "") -> EncodedPairs:
        return encode_pairs(self.tokenizer, [text for text, _ in pairs], [description for _, description in pairs],
                            self.config.max_length, marked=marked, normalization=self.config.text_normalization)

    @torch.inference_mode()
    def _predict_batch(self, pairs: list[tuple[str, str]], marked: str = "") -> list[Prediction]:
        batch = self.encode(pairs, marked)
        out = self._forward(batch)
        probs = softmax_rows(out.sentiment_logits)                                          # (B, n_sentiment)
        emotion_probs = softmax_rows(out.emotion_logits) if out.emotion_logits is not None else None
        selected_idx = out.selected_idx                                                         # (B, K)
        token_relevance = torch.sigmoid(out.selected_scores.float()).tolist()                  # (B, K) in 0..1
        valid = out.selected_valid.tolist()
        sources = batch.source.gather(1, selected_idx).tolist()                                 # (B, K)
        spans = batch.offsets.gather(1, selected_idx.unsqueeze(-1).expand(-1, -1, 2)).tolist()  # (B, K, 2)

        predictions = []
        # rationale words are sliced from the texts as the model read them (normalised: `model.normalize`)
        for row, (text, description) in enumerate(zip(batch.texts, batch.descriptions)):
            token_spans = [
                TokenSpan(SOURCE_NAMES[sources[row][j]], spans[row][j][0], spans[row][j][1], token_relevance[row][j])
                for j in range(len(valid[row]))
                if valid[row][j] and sources[row][j] in SOURCE_NAMES
            ]
            predictions.append(Prediction(
                label=self._best(self.config.sentiment_labels, probs[row]),
                scores=self._scores(self.config.sentiment_labels, probs[row]),
                emotion=None if emotion_probs is None else {
                    "label": self._best(self.config.emotion_labels, emotion_probs[row]),
                    "scores": self._scores(self.config.emotion_labels, emotion_probs[row]),
                },
                rationale=merge_to_words(token_spans, {"text": text, "image": description}),
            ))
        return predictions

    @staticmethod
    def _scores(labels: tuple[str, ...], probs: list[float]) -> dict[str, float]:
        return {label: round(p, 4) for label, p in zip(labels, probs)}

    @staticmethod
    def _best(labels: tuple[str, ...], probs: list[float]) -> str:
        return labels[max(range(len(probs)), key=probs.__getitem__)]


class BatchPredictor(PairPredictor):
    """The torch backend: the deployed model itself, eager, bf16 with pre-packed linears where it pays."""

    backend = "torch"

    def __init__(self, model: AlignedClassifier, tokenizer, config: AlignedConfig, *, device: str = "auto",
                 dtype: str = "auto", top_k: int | None = None, batch_size: int = 64, version: str | None = None):
        super().__init__(tokenizer, config, top_k=top_k, batch_size=batch_size, version=version)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        # bf16 on a CPU: pre-pack the weights for oneDNN/AMX (see the module docstring). In place, like
        # the dtype cast above: the model given to a predictor belongs to it from now on.
        self.packed_linears = 0
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and packed_linear_works(self.dtype):
            self.packed_linears = pack_linears(self.model)

    @classmethod
    def from_directory(cls, path: str | Path, device: str = "auto", threads: int = 0, top_k: int | None = None,
                       dtype: str = "auto", batch_size: int = 64) -> "BatchPredictor":
        if threads > 0:
            torch.set_num_threads(threads)
        model, tokenizer, config = load_deployed(path)
        version = config.version if config.version != "untrained" else f"untrained:{Path(path).name}"
        return cls(model, tokenizer, config, device=device, dtype=dtype, top_k=top_k,
                   batch_size=batch_size, version=version)

    @torch.inference_mode()
    def _forward(self, batch: EncodedPairs) -> ForwardOutputs:
        inputs = {name: tensor.to(self.device) for name, tensor in batch.model_inputs().items()}
        out: AlignedOutput = self.model(**inputs, top_k=self.top_k)
        return ForwardOutputs(
            sentiment_logits=out.sentiment_logits.cpu(),
            emotion_logits=None if out.emotion_logits is None else out.emotion_logits.cpu(),
            selected_idx=out.selected_idx.cpu(),
            selected_scores=out.selected_scores.cpu(),
            selected_valid=out.selected_valid.cpu(),
        )
