"""Serving backends (model/serving.py): the ONNX graphs give the torch model's answers, int8 runs, `auto`
serves int8 only behind a passing quality gate measured on the same weights, and bad settings fail clearly."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from affectstream.model import serving
from affectstream.model.predictor import MAX_PADDING, length_buckets, spread_chunks
from affectstream.model.targets import TargetInput
from tests.tiny_models import save_tiny

POSTS = [
    ("love it", ""),                                   # shorter than K tokens: the graph pads to K
    ("", "objects: pizza. scene: warm colours, mostly orange."),
    ("", ""),                                          # no real token at all
    ("worst service ever, never again!!! @acme fix your app", "objects: web site. scene: bright."),
    ("the battery lasts two days and the screen is gorgeous " * 12, ""),  # truncated at max_length
    ("meh", 'objects: espresso. text in image: "worst monday ever". scene: dark.'),
]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AFFECTSTREAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def emotion_model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("serving") / "tiny-emotion", kind="bert", top_k=4, emotions=True)


def same_prediction(a, b, tol: float = 2e-3) -> None:
    assert a.label == b.label
    assert a.scores.keys() == b.scores.keys()
    assert all(abs(a.scores[k] - b.scores[k]) <= tol for k in a.scores)
    assert (a.emotion is None) == (b.emotion is None)
    if a.emotion is not None:
        assert a.emotion["label"] == b.emotion["label"]
    assert [(w.text, w.source) for w in a.rationale] == [(w.text, w.source) for w in b.rationale]
    assert all(abs(x.score - y.score) <= tol for x, y in zip(a.rationale, b.rationale))


def test_onnx_fp32_gives_the_torch_models_labels_scores_and_rationales(emotion_model_dir, cache):
    reference = serving.load_predictor(emotion_model_dir, "torch", device="cpu", dtype="fp32")
    onnx = serving.load_predictor(emotion_model_dir, "onnx-fp32")
    assert onnx.backend == "onnx-fp32" and onnx.version == reference.version
    expected, got = reference.predict(POSTS), onnx.predict(POSTS)
    assert any(p.rationale for p in expected)
    for a, b in zip(expected, got):
        same_prediction(a, b)
    # one post at a time (every batch shorter than K for the short ones) gives the same answers
    for pair, a in zip(POSTS, expected):
        same_prediction(a, onnx.predict([pair])[0])


def test_a_post_without_any_token_leaves_its_batch_neighbours_answers_alone_on_onnx(emotion_model_dir, cache):
    reference = serving.load_predictor(emotion_model_dir, "torch", device="cpu", dtype="fp32")
    onnx = serving.load_predictor(emotion_model_dir, "onnx-fp32", threads=1)
    # one micro-batch call, sorted by characters: a short post first, then one of blanks only (no token at all)
    batch = [("love it", ""), (" " * 12, ""), POSTS[3]]
    for a, b in zip(reference.predict(batch), onnx.predict(batch)):
        same_prediction(a, b)
    same_prediction(onnx.predict(batch)[0], onnx.predict(batch[:1])[0])


def test_parallel_lanes_give_the_answers_of_one_call_per_chunk_in_input_order(emotion_model_dir, cache):
    lanes = serving.load_predictor(emotion_model_dir, "onnx-fp32", threads=2)
    single = serving.load_predictor(emotion_model_dir, "onnx-fp32", threads=1)
    assert lanes.lanes == 2 and single.lanes == 1
    posts = POSTS * 5  # 30 posts of six lengths: several chunks, run two at a time
    for a, b in zip(single.predict(posts), lanes.predict(posts)):
        same_prediction(a, b, tol=1e-4)
    chunk_counts = []
    run_chunks = lanes._run_chunks
    lanes._run_chunks = lambda chunks, marked: chunk_counts.append(len(chunks)) or run_chunks(chunks, marked)
    lanes.predict(POSTS[:2])
    assert chunk_counts == [2]  # a two-post micro-batch (one length bucket) is split: one post per lane


def test_the_bench_times_the_forward_that_serving_runs_on_either_backend(emotion_model_dir, cache):
    from affectstream.bench.forward import forward_of

    reference = serving.load_predictor(emotion_model_dir, "torch", device="cpu", dtype="fp32")
    lanes = serving.load_predictor(emotion_model_dir, "onnx-fp32", threads=2)
    parts = [reference.encode(POSTS[:3]), reference.encode(POSTS[3:])]
    with torch.inference_mode(), forward_of(reference) as torch_forward, forward_of(lanes) as onnx_forward:
        expected = [out.sentiment_logits for out in torch_forward(parts)]
        names = [o.name for o in lanes.session.get_outputs()]
        got = [torch.from_numpy(dict(zip(names, out))["sentiment_logits"]) for out in onnx_forward(parts)]
    assert lanes.lanes == 2 and len(got) == len(expected) == 2
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@given(st.lists(st.lists(st.integers(), max_size=20), max_size=6), st.integers(1, 8))
def test_spread_chunks_keeps_every_item_in_order_and_fills_the_lanes(chunks, lanes):
    spread = spread_chunks(chunks, lanes)
    assert [x for c in spread for x in c] == [x for c in chunks for x in c]
    assert all(spread)
    items = sum(map(len, chunks))
    assert len(spread) >= min(lanes, items)


def test_onnx_fp32_matches_torch_on_targets_of_a_target_aware_model(tmp_path, cache):
    model_dir = save_tiny(tmp_path / "tiny-targets", kind="bert", top_k=4, target_format="marked-v2")
    items = [TargetInput("acme is great but nimbus is awful", "", "acme", ((0, 4),)),
             TargetInput("acme is great but nimbus is awful", "", "Nimbus", ((18, 24),)),
             TargetInput("no mention here", "objects: phone.", "Voltcar", ())]
    reference = serving.load_predictor(model_dir, "torch", device="cpu", dtype="fp32")
    onnx = serving.load_predictor(model_dir, "onnx-fp32")
    assert onnx.target_aware
    for a, b in zip(reference.predict_targets(items), onnx.predict_targets(items)):
        same_prediction(a, b)


def test_int8_backend_runs_from_a_smaller_cached_graph(emotion_model_dir, cache):
    int8 = serving.load_predictor(emotion_model_dir, "onnx-int8")
    predictions = int8.predict(POSTS)
    assert len(predictions) == len(POSTS)
    assert all(p.label in int8.config.sentiment_labels and abs(sum(p.scores.values()) - 1) < 0.01 for p in predictions)
    assert int8.graph.is_relative_to(cache / "onnx") and int8.graph.name == "model-int8.onnx"
    fp32 = int8.graph.with_name("model-fp32.onnx")
    assert int8.graph.stat().st_size < fp32.stat().st_size
    # a second load reuses the cached graphs instead of exporting again
    mtime = int8.graph.stat().st_mtime_ns
    assert serving.load_predictor(emotion_model_dir, "onnx-int8").graph.stat().st_mtime_ns == mtime


def test_new_weights_get_a_new_graph(tmp_path, cache):
    first = save_tiny(tmp_path / "a", kind="bert", top_k=4)
    second = save_tiny(tmp_path / "b", kind="bert", top_k=4, dropout=0.2)  # same weights, other config
    assert serving.ensure_onnx(first, "fp32") != serving.ensure_onnx(second, "fp32")
    assert serving.ensure_onnx(first, "fp32", top_k=3) != serving.ensure_onnx(first, "fp32")


def gate(model_dir, passed: bool, weights: str | None = None) -> dict:
    return {"passed": passed, "weights_hash": weights or serving.weights_hash(model_dir), "sets": {},
            "recipe": serving.EXPORT_RECIPE}


def test_auto_serves_int8_only_behind_a_passing_gate_for_these_weights(tmp_path, cache, monkeypatch):
    model_dir = save_tiny(tmp_path / "m", kind="bert", top_k=4)
    monkeypatch.setattr(serving, "cpu_flags", lambda: frozenset({"avx512_vnni", "avx512_bf16"}))
    assert serving.choose_backend(model_dir, "cpu")[0] == "torch"                 # no gate measured
    (model_dir / serving.GATE_FILE).write_text(json.dumps(gate(model_dir, passed=False)))
    assert serving.choose_backend(model_dir, "cpu")[0] == "torch"                 # gate failed
    (model_dir / serving.GATE_FILE).write_text(json.dumps(gate(model_dir, passed=True, weights="0" * 64)))
    backend, reason = serving.choose_backend(model_dir, "cpu")
    assert backend == "torch" and "gate" in reason                               # passed on other weights
    (model_dir / serving.GATE_FILE).write_text(json.dumps(gate(model_dir, passed=True) | {"recipe": "aligned-onnx-v0"}))
    assert serving.choose_backend(model_dir, "cpu")[0] == "torch"                 # passed with another int8 recipe
    (model_dir / serving.GATE_FILE).write_text(json.dumps(gate(model_dir, passed=True)))
    assert serving.choose_backend(model_dir, "cpu")[0] == "onnx-int8"
    chosen = serving.load_predictor(model_dir, "auto", device="cpu")
    assert chosen.backend == "onnx-int8" and "gate passed" in chosen.backend_reason


def test_auto_falls_back_to_torch_when_the_onnx_backend_cannot_load_but_a_named_backend_fails(tmp_path, cache,
                                                                                              monkeypatch):
    model_dir = save_tiny(tmp_path / "m", kind="bert", top_k=4)
    (model_dir / serving.GATE_FILE).write_text(json.dumps(gate(model_dir, passed=True)))
    monkeypatch.setattr(serving, "cpu_flags", lambda: frozenset({"avx512_vnni"}))

    def broken(*args, **kwargs):
        raise RuntimeError("ONNX export of m failed: read-only file system")

    monkeypatch.setattr(serving.OnnxPredictor, "from_directory", broken)
    chosen = serving.load_predictor(model_dir, "auto", device="cpu")
    assert chosen.backend == "torch" and "onnx-int8 failed to load" in chosen.backend_reason
    assert chosen.predict([("great phone", "")])[0].label in chosen.config.sentiment_labels
    with pytest.raises(RuntimeError, match="read-only"):
        serving.load_predictor(model_dir, "onnx-int8", device="cpu")


def test_auto_without_int8_units_never_serves_int8(tmp_path, cache, monkeypatch):
    model_dir = save_tiny(tmp_path / "m", kind="bert", top_k=4)
    (model_dir / serving.GATE_FILE).write_text(json.dumps(gate(model_dir, passed=True)))
    monkeypatch.setattr(serving, "cpu_flags", lambda: frozenset({"avx2"}))
    assert serving.choose_backend(model_dir, "cpu")[0] == "onnx-fp32"
    monkeypatch.setattr(serving, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert serving.choose_backend(model_dir, "cpu")[0] == "torch"


def test_a_model_directory_that_cannot_take_the_gate_keeps_it_in_the_cache(tmp_path, cache):
    model_dir = save_tiny(tmp_path / "m", kind="bert", top_k=4)
    (model_dir / serving.GATE_FILE).mkdir()  # unwritable as a file, whoever runs the test (root ignores modes)
    where = serving.write_gate(model_dir, gate(model_dir, passed=True))
    assert where.is_relative_to(cache)
    assert serving.gate_passed(model_dir)


def test_unknown_backend_is_refused_with_the_choices(tiny_model_dir):
    with pytest.raises(ValueError, match="onnx-int8.*auto|torch, onnx-fp32, onnx-int8, auto"):
        serving.load_predictor(tiny_model_dir, "tensorrt")


def test_onnx_backends_refuse_a_gpu_device(tiny_model_dir):
    with pytest.raises(ValueError, match="runs on the CPU"):
        serving.load_predictor(tiny_model_dir, "onnx-int8", device="cuda")


@pytest.mark.parametrize("lengths,batch", [([5] * 100, 32), (list(range(1, 200)), 64), ([3, 3, 3, 50, 51, 400], 4), ([], 8)])
def test_length_buckets_cover_every_post_once_and_bound_padding(lengths, batch):
    ranges = length_buckets(lengths, batch)
    assert [i for start, end in ranges for i in range(start, end)] == list(range(len(lengths)))
    for start, end in ranges:
        assert 0 < end - start <= batch
        bucket = lengths[start:end]
        if end - start > 8:  # below the minimum size a bucket may pad more
            assert len(bucket) * max(bucket) <= (1 + MAX_PADDING) * sum(bucket) + 1e-9


def gate_samples():
    from affectstream.training.samples import Sample

    texts = ["love it so much", "worst day ever", "it is a phone", "great screen, bad battery", "never again",
             "thanks a lot!", "meh", "best purchase this year", "awful support", "ok I guess"]
    labels = ["positive", "negative", "neutral", "neutral", "negative", "positive", "neutral", "positive",
              "negative", "neutral"]
    return [Sample(id=str(i), text=t, label=lab, split="test") for i, (t, lab) in enumerate(zip(texts, labels))]


@pytest.mark.parametrize("int8_breaks", [False, True])
def test_int8_gate_records_its_sets_and_decides_what_auto_serves(tmp_path, cache, monkeypatch, int8_breaks):
    from click.testing import CliRunner

    from affectstream.training import int8_gate
    from affectstream.bench.cli import bench

    model_dir = save_tiny(tmp_path / "m", kind="bert", top_k=4)
    monkeypatch.setattr(int8_gate, "gate_sets", lambda root, say=print: {"mini-test": gate_samples()})
    monkeypatch.setattr(serving, "cpu_flags", lambda: frozenset({"avx512_vnni", "avx512_bf16"}))
    if int8_breaks:  # an int8 model that lost its quality: every label "neutral"
        labels = int8_gate.predict_labels
        monkeypatch.setattr(int8_gate, "predict_labels", lambda predictor, samples: (
            ["neutral"] * len(samples) if predictor.backend == "onnx-int8" else labels(predictor, samples)))
    result = CliRunner().invoke(bench, ["--int8-gate", str(model_dir)], catch_exceptions=False)
    gate = serving.read_gate(model_dir)
    s = gate["sets"]["mini-test"]
    assert s["n"] == 10 and gate["weights_hash"] == serving.weights_hash(model_dir)
    assert s["passed"] == (s["macro_f1_int8"] >= s["macro_f1_reference"] - serving.GATE_TOLERANCE)
    assert gate["passed"] == s["passed"] and "mini-test" in gate["card_line"]
    assert result.exit_code == (0 if gate["passed"] else 1)
    if int8_breaks:
        assert not gate["passed"] and s["delta_points"] < -0.5 and "NOT passed" in result.output
    assert serving.choose_backend(model_dir, "cpu")[0] == ("onnx-int8" if gate["passed"] else "torch")


def test_int8_gate_names_the_sets_it_could_not_read(tmp_path, cache, monkeypatch):
    """A gate run on a machine without the Twitter sets says so in the record and the card line, and
    reads them from the data path it is given."""
    from affectstream.training import int8_gate

    model_dir = save_tiny(tmp_path / "m", kind="bert", top_k=4)
    seen: list[str] = []
    monkeypatch.setattr(int8_gate, "gate_sets", lambda root, say=print: seen.append(str(root)) or {"mini-test": gate_samples()})
    monkeypatch.setattr(serving, "cpu_flags", lambda: frozenset({"avx512_vnni", "avx512_bf16"}))
    gate = int8_gate.run_gate(model_dir, tmp_path / "nowhere", say=lambda msg: None, write=False)
    assert seen == [str(tmp_path / "nowhere")] and gate["data_path"] == str(tmp_path / "nowhere")
    assert gate["missing"] == ["twitter2015-test", "twitter2017-test"]
    assert "twitter2015-test" in gate["card_line"] and "not checked" in gate["card_line"]
