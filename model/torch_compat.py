"""torch's private oneDNN linear kernels, the only private torch API affectstream uses, behind one door.

On CPUs with bf16 matrix units (AMX / AVX512-BF16) the torch backend turns every ``nn.Linear`` of the
model into one oneDNN matmul primitive (`PackedLinear`): the weight pre-packed once in the blocked layout
the AMX kernels read, the bias applied inside the kernel, and the GELU after an encoder's intermediate
projection fused into it (`pack_linears`). A plain bf16 ``F.linear`` copies the broadcast bias into the
output and re-lays out the weight on every call; docs/performance.md has the measured difference.

The kernels are ``torch.ops.mkldnn._reorder_linear_weight`` and ``_linear_pointwise`` (and
``_is_mkldnn_bf16_supported``): private, so they may change in any torch release. Hence:

- ``TESTED_TORCH``: the torch releases they were tested with (pyproject.toml pins the same);
  ``check_torch()`` runs when a torch predictor starts and logs what to do when torch is outside them;
- ``packed_linear_works(dtype)``: the kernels exist and agree with ``F.linear`` on this build, or they are
  not used at all;
- ``pack_if_supported(model, dtype)``: packs where they work, else leaves the public ``nn.Linear`` serving.

A packed primitive's rows (batch x tokens) are padded up to a few fixed sizes (`padded_rows`): oneDNN builds
and caches a kernel per shape, and a worker sees every batch size times every bucket length, so without it
a long-running worker's memory grows with every new shape.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
from packaging.specifiers import SpecifierSet
from packaging.version import Version

log = logging.getLogger(__name__)

TESTED_TORCH = SpecifierSet(">=2.13,<2.14")
PRIVATE_OPS = ("_reorder_linear_weight", "_linear_pointwise", "_is_mkldnn_bf16_supported")  # torch.ops.mkldnn
ROW_QUANTUM = 32   # the smallest padding step of a packed primitive's rows


def torch_problems(version: str = torch.__version__) -> list[str]:
    """What is wrong with this torch for the packed linears, each with what to do; empty when nothing is."""
    problems = []
    if Version(Version(version).base_version) not in TESTED_TORCH:
        problems.append(f"torch {version} is outside the releases the oneDNN packed linears were tested with "
                        f"({TESTED_TORCH}): install torch{TESTED_TORCH} as pyproject.toml pins it, or serve with "
                        "AFFECTSTREAM_INFERENCE_BACKEND=onnx-int8 / onnx-fp32. Until then they are used only where "
                        "their self-check against F.linear passes, and plain nn.Linear serves otherwise.")
    missing = [name for name in PRIVATE_OPS if not hasattr(torch.ops.mkldnn, name)]
    if missing:
        problems.append(f"torch.ops.mkldnn has no {', '.join(missing)} in torch {version}: bf16 serving uses plain "
                        f"nn.Linear (slower on AMX CPUs); install torch{TESTED_TORCH} to get the packed linears back.")
    return problems


@functools.cache
def check_torch() -> list[str]:
    """Log `torch_problems` once per process (a torch predictor's start-up); returns them."""
    problems = torch_problems()
    for problem in problems:
        log.warning(problem)
    return problems


def _exact_gelu(module: nn.Module | None) -> bool:
    """nn.GELU() or Hugging Face's GELUActivation (erf GELU, as BERT and RoBERTa use): fusable."""
    if isinstance(module, nn.GELU):
        return module.approximate == "none"
    return type(module).__name__ == "GELUActivation" and getattr(module, "act", None) is F.gelu


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
        rows = x.reshape(-1, self.in_features)                  # (batch * tokens, in_features)
        n = rows.shape[0]
        rows = F.pad(rows, (0, 0, 0, padded_rows(n) - n))      # one of a bounded set of shapes (module docstring)
        y = torch.ops.mkldnn._linear_pointwise(rows.contiguous(), self.packed_weight, self.bias, self.attr, [],
                                                self.algorithm)
        return y[:n].view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused={self.attr}"


@functools.cache
def packed_linear_works(dtype: torch.dtype) -> bool:
    """Whether this torch build has the oneDNN linear kernels for `dtype`, and they agree with F.linear."""
    try:
        if not torch.backends.mkldnn.is_available() or any(not hasattr(torch.ops.mkldnn, n) for n in PRIVATE_OPS):
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
    except (RuntimeError, AttributeError, TypeError):  # an op renamed, gone or with another signature
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


def pack_if_supported(model: nn.Module, dtype: torch.dtype) -> int:
    """`pack_linears` where this torch's kernels work for `dtype` (checked once, `check_torch` logged), else
    nothing: the model keeps its nn.Linear layers. Returns how many were packed."""
    check_torch()
    return pack_linears(model) if packed_linear_works(dtype) else 0
