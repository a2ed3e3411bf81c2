"""The torch backend's oneDNN packed linears: the same numbers as nn.Linear (+ GELU) for any row count, and
a bounded set of row shapes (`padded_rows`), so a long-running worker does not build a kernel per shape; and
plain nn.Linear where the private kernels are gone or torch is not the tested release."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from affectstream.model import torch_compat
from affectstream.model.torch_compat import PackedLinear, pack_linears, packed_linear_works, padded_rows


@given(st.integers(min_value=1, max_value=200_000))
def test_padded_rows_covers_the_rows_with_bounded_padding(rows):
    padded = padded_rows(rows)
    assert padded >= rows
    assert padded - rows < max(32, rows / 8)
    assert padded_rows(padded) == padded  # a padded size is a fixed point: no second round of padding


def test_padded_rows_meets_a_bounded_set_of_shapes():
    # every batch of up to 64 posts x 96 tokens (the serving limits) lands on one of a few dozen sizes
    sizes = {padded_rows(rows) for rows in range(1, 64 * 96 + 1)}
    assert len(sizes) <= 48
    assert sorted(sizes) == sorted({padded_rows(s) for s in sizes})


@pytest.mark.skipif(not packed_linear_works(torch.float32), reason="this torch build has no oneDNN linear kernels")
@settings(deadline=None, max_examples=25)
@given(rows=st.integers(min_value=1, max_value=300), gelu=st.booleans())
def test_packed_linear_equals_linear_for_any_row_count(rows, gelu):
    torch.manual_seed(rows)
    linear = nn.Linear(48, 40)
    x = torch.randn(rows, 48)
    expected = F.linear(x, linear.weight, linear.bias)
    expected = F.gelu(expected) if gelu else expected
    with torch.inference_mode():
        got = PackedLinear(linear, gelu=gelu)(x.view(1, rows, 48))
    assert got.shape == (1, rows, 40)
    torch.testing.assert_close(got[0], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not packed_linear_works(torch.float32), reason="this torch build has no oneDNN linear kernels")
def test_pack_linears_fuses_the_gelu_after_a_linear_in_a_sequential():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    x = torch.randn(3, 7, 16)
    expected = net(x)
    assert pack_linears(net) == 2
    assert isinstance(net[1], nn.Identity)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), expected, atol=1e-4, rtol=1e-4)


def test_a_torch_outside_the_tested_releases_is_named_with_what_to_do():
    assert torch_compat.torch_problems() == [], "the installed torch is the tested one (pyproject pins it)"
    problems = torch_compat.torch_problems("2.99.0")
    assert len(problems) == 1 and f"torch{torch_compat.TESTED_TORCH}" in problems[0] and "onnx-int8" in problems[0]


@pytest.fixture
def kernels_gone(monkeypatch):
    """A torch whose private oneDNN linear op is gone (renamed in a later release, say)."""
    monkeypatch.setattr(torch_compat, "PRIVATE_OPS", (*torch_compat.PRIVATE_OPS, "_linear_pointwise_renamed"))
    torch_compat.packed_linear_works.cache_clear()
    yield
    torch_compat.packed_linear_works.cache_clear()


def test_without_the_private_kernels_plain_linears_serve_with_the_same_outputs(kernels_gone):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    x = torch.randn(3, 7, 16)
    expected = net(x)
    assert any("_linear_pointwise_renamed" in p for p in torch_compat.torch_problems())
    assert torch_compat.pack_if_supported(net, torch.float32) == 0
    assert [type(m) for m in net] == [nn.Linear, nn.GELU, nn.Linear]
    torch.testing.assert_close(net(x), expected)


def test_a_bf16_torch_predictor_without_the_kernels_keeps_nn_linear_and_predicts(kernels_gone, tiny_model_dir):
    from affectstream.model.predictor import BatchPredictor

    predictor = BatchPredictor.from_directory(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert predictor.packed_linears == 0
    assert not any(isinstance(m, PackedLinear) for m in predictor.model.modules())
    [prediction] = predictor.predict([("what a lovely day", "")])
    assert prediction.label in predictor.config.sentiment_labels and abs(sum(prediction.scores.values()) - 1) < 0.01
