"""The served backend's forward pass alone, called by the bench itself (the forward share, bench/classify.py).

The bench runs what the predictor holds, through its public attributes: the torch backend's ``model``, or the
ONNX Runtime ``session`` with the feeds serving builds (``serving.onnx_feeds``). A backend with parallel
``lanes`` gets the parts of a micro-batch at once, as serving runs them, from a thread pool of the bench's own.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

from affectstream.model.serving import OnnxPredictor, onnx_feeds
from affectstream.model.tokenization import EncodedPairs

Forward = Callable[[list[EncodedPairs]], list[Any]]


def _one(serving) -> Callable[[EncodedPairs], Any]:
    """One encoded part through the backend's model; returns what the model returns."""
    if isinstance(serving, OnnxPredictor):
        session = serving.session
        names = [i.name for i in session.get_inputs()]
        return lambda batch: session.run(None, onnx_feeds(batch, names, serving.top_k, serving.tokenizer))

    def torch_forward(batch: EncodedPairs) -> Any:
        inputs = {name: tensor.to(serving.device) for name, tensor in batch.model_inputs().items()}
        return serving.model(**inputs, top_k=serving.top_k)

    return torch_forward


@contextlib.contextmanager
def forward_of(serving) -> Iterator[Forward]:
    """``forward(parts)``: the parts of one micro-batch through the backend, one call per part, ``lanes`` at
    once. Torch runs in the calling thread (under the caller's ``torch.inference_mode``)."""
    one = _one(serving)
    lanes = getattr(serving, "lanes", 1)
    if lanes < 2:
        yield lambda parts: [one(part) for part in parts]
        return
    with ThreadPoolExecutor(lanes, thread_name_prefix="bench-lane") as pool:
        yield lambda parts: list(pool.map(one, parts))
