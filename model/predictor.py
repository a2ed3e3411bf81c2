"""Batch predictor for serving: (post text, image description) pairs -> labels, scores, rationales.

`PairPredictor` is everything around the forward pass that every serving backend shares: tokenisation,
length bucketing, target marking, top-K decoding and the rationale. `BatchPredictor` is the torch backend;
model/serving.py adds the ONNX Runtime ones (fp32, int8) and `load_predictor`, which picks between them.

Fast on CPUs by construction:
- pairs are sorted by length and each micro-batch is split into length buckets whose padding stays
  under `MAX_PADDING` (a tweet batch padded to its longest post is mostly padding); padding is dynamic;
- the model runs under `torch.inference_mode`;
- on CPUs with bf16 matrix units (AMX / AVX512-BF16) the weights are cast to bf16 once (no per-call
  autocast casts), and every `nn.Linear` becomes one oneDNN matmul primitive over a pre-packed weight
  (model/torch_compat.py: torch's private kernels, used only where they work, else plain `nn.Linear`).
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from affectstream.model.aligned import AlignedClassifier, AlignedOutput
from affectstream.model.config import AlignedConfig
from affectstream.model.deploy import load_deployed
from affectstream.model.device import pick_device, pick_dtype
from affectstream.model.rationale import RationaleWord, TokenSpan, merge_to_words
from affectstream.model.targets import TargetInput, mark_target, shift_scores
from affectstream.model.tokenization import SOURCE_NAMES, EncodedPairs, encode_pairs, encoding_options
from affectstream.model.torch_compat import pack_if_supported


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
    """Row-wise softmax of a small (B, classes) tensor in numpy: torch's op wakes its thread pool, which on a
    busy host costs several times the whole decode of a post (docs/performance.md)."""
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
        predictions = self._predict_sorted(pairs, marked=target_format)
        bias, labels = self.config.target_bias, tuple(self.config.sentiment_labels)
        if any(bias):  # the target-level decision boundary (AlignedConfig.target_bias)
            for p in predictions:
                p.scores = {label: round(v, 4) for label, v in shift_scores(p.scores, bias, labels).items()}
                p.label = max(labels, key=p.scores.__getitem__)
        return predictions

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

    def encode(self, pairs: list[tuple[str, str]], marked: str = "") -> EncodedPairs:
        return encode_pairs(self.tokenizer, [text for text, _ in pairs], [description for _, description in pairs],
                            self.config.max_length, marked=marked, **encoding_options(self.config))

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
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:
            self.packed_linears = pack_if_supported(self.model, self.dtype)

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
