"""Retraining with corrections: the mix (latest wins, de-duplication, fixed hold-out, no leak into the base
evaluation splits), the flood guard, the decision rule, a tiny candidate that learns sarcasm, a sabotaged one
that is refused, and the whole ``affectstream retrain`` job on the real broker and Redis (intake offsets,
its own offsets, the store, the registry's lineage)."""
from __future__ import annotations

import importlib.util
import json
import random

import orjson
import pytest
from click.testing import CliRunner

from affectstream.cli import main
from affectstream.model.config import SENTIMENT_LABELS
from affectstream.model.registry import Registry
from affectstream.model.serving import INT8_FLAGS, cpu_flags, read_gate
from affectstream.streaming.tools.workers import WorkerProcess, settings_env
from affectstream.streaming.worker.feedback import intake_group
from affectstream.streaming.worker.redis_client import sync_redis
from affectstream.training.config import PRESETS
from affectstream.training.retrain import (HELD_OUT, CorrectedPost, RetrainOptions, decide, flood_reasons,
                                           held_out, mix_corrections, retrain)
from affectstream.training.samples import Dataset, Sample
from affectstream.training.train import train
from tests.servers import workers_running
from tests.test_feedback import stream_settings
from tests.test_pipeline import wait_for

WORDS = {"positive": ["love", "great", "awesome"], "negative": ["hate", "awful", "terrible"],
         "neutral": ["table", "monday", "blue"]}
T0 = 1764410400000
MLFLOW = importlib.util.find_spec("mlflow") is not None


def fix(post_id: str, text: str, label: str = "negative", old: str = "positive", ts: int = T0, target=None,
        analyst: str = "ana") -> CorrectedPost:
    return CorrectedPost(post_id=post_id, target=target, text=text, caption="", label=label, old_label=old,
                         analyst=analyst, ts=ts)


def base_set(train_per_label: int = 10, eval_texts: tuple[str, ...] = ()) -> list[Dataset]:
    samples = [Sample(id=f"b{label}{i}", text=f"{label} {i}", label=label, split="train")
               for label in SENTIMENT_LABELS for i in range(train_per_label)]
    samples += [Sample(id=f"e{i}", text=t, label="neutral", split="test") for i, t in enumerate(eval_texts)]
    return [Dataset(name="base", samples=samples, has_emotion=False)]


# --- the mix, the guard, the decision (pure) ---------------------------------------------------------------

def test_the_latest_correction_wins_reposts_are_one_example_and_targets_do_not_train():
    options = RetrainOptions(holdout_share=0.0)
    mix = mix_corrections([fix("p1", "so great", label="neutral", ts=T0 + 5), fix("p1", "so great", ts=T0),
                           fix("p2", "Oh  I LOVE Mondays", ts=T0 + 1), fix("p3", "oh i love mondays", ts=T0 + 2),
                           fix("p4", "acme is great", target="acme"), fix("p5", "   "),
                           fix("p6", "the test text")], base_set(eval_texts=("The test  text",)), options)
    assert {(c.post_id, c.label) for c in mix.train} == {("p1", "neutral"), ("p3", "negative")}
    assert mix.counts["superseded"] == 1 and mix.counts["duplicate_text"] == 1 and mix.counts["target_level"] == 1
    assert mix.counts["no_text"] == 1 and mix.counts["in_base_eval_split"] == 1   # never leaks into the base test


def test_the_held_out_share_is_fixed_by_post_id_across_runs():
    posts = [fix(f"p{i}", f"text number {i}") for i in range(1000)]
    options = RetrainOptions(holdout_share=0.2)
    first = mix_corrections(posts, base_set(), options)
    again = mix_corrections(list(reversed(posts)), base_set(), options)
    assert {c.post_id for c in first.held_out} == {c.post_id for c in again.held_out}
    assert 150 < len(first.held_out) < 250 and len(first.train) + len(first.held_out) == 1000
    assert all(held_out(c.post_id, 0.2, options.holdout_salt) for c in first.held_out)
    assert first.fingerprint() == again.fingerprint()


def test_corrections_that_would_flip_most_of_a_class_are_refused():
    options = RetrainOptions(holdout_share=0.0, max_class_flip=0.5)
    base = base_set(train_per_label=10)
    few = mix_corrections([fix(f"p{i}", f"sarcasm {i}") for i in range(5)], base, options)
    flood = mix_corrections([fix(f"p{i}", f"sarcasm {i}") for i in range(6)], base, options)
    assert flood_reasons(few, base, options) == []
    [reason] = flood_reasons(flood, base, options)
    assert reason.startswith("class_flood: 6 corrections move posts out of 'positive'")


def test_a_candidate_worse_beyond_the_tolerance_on_a_base_test_set_is_not_proposed():
    def m(f1: float) -> dict:
        return {"n": 100, "accuracy": f1, "macro_f1": f1}

    options = RetrainOptions(tolerance=0.02)
    ok = decide({"a": m(0.70), HELD_OUT: m(0.2)}, {"a": m(0.685), HELD_OUT: m(0.9)}, ["a"], options)
    bad = decide({"a": m(0.70), "b": m(0.5), HELD_OUT: m(0.2)}, {"a": m(0.75), "b": m(0.47), HELD_OUT: m(0.9)},
                 ["a", "b"], options)
    assert ok.proposed and [r["verdict"] for r in ok.rows] == ["decides", "reported"]
    assert not bad.proposed and bad.reasons == ["worse on b: macro_f1 0.4700 vs 0.5000 (-0.0300, tolerance 0.02)"]


# --- tiny trainings ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A tiny model trained on a keyword task ('love' is positive) and the base data it was trained on."""
    root = tmp_path_factory.mktemp("retrain")
    rng = random.Random(0)
    lines = []
    for i in range(240):
        label = SENTIMENT_LABELS[i % 3]
        text = f"{rng.choice(['so', 'the', 'my'])} {rng.choice(WORDS[label])} {rng.choice(['phone', 'coffee', 'car'])}"
        lines.append(orjson.dumps({"id": f"k{i}", "text": text, "label": label}))
    (root / "base.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    cfg = tiny_cfg(root)
    train(cfg.replace(out_dir=str(root / "deployed"), run_dir=str(root / "run")), progress=False)
    return root, cfg


def tiny_cfg(root):
    return PRESETS["tiny"].replace(dataset="jsonl", data_path=str(root / "base.jsonl"), cache_dir=str(root / "cache"),
                                   epochs=4, resume=False)


SARCASM = ["oh great, i just love waiting {} hours", "i love it when my phone dies {} times",
           "love how the coffee is cold again ({})"]


def sarcastic(n: int, start: int = 0, analyst: str = "ana") -> list[CorrectedPost]:
    return [fix(f"s{i}", SARCASM[i % 3].format(i), ts=T0 + i, analyst=analyst) for i in range(start, start + n)]


def test_a_candidate_trained_with_sarcasm_corrections_is_proposed_and_learns_them(deployed, tmp_path):
    root, cfg = deployed
    result = retrain(cfg, sarcastic(30), root / "deployed", tmp_path / "work")
    assert result.status == "proposed", result.table
    rows = {r["test set"]: r for r in result.decision.rows}
    assert set(rows) == {"base", HELD_OUT} and rows[HELD_OUT]["n"] == result.mix.counts["held_out"] > 0
    assert rows[HELD_OUT]["candidate acc"] > rows[HELD_OUT]["deployed acc"]
    assert "PROPOSED" in result.table and "seed 13" in result.table
    assert set(result.data["base"]) == {"base"} and len(result.data["corrections"]) == 64


def test_a_sabotaged_candidate_is_refused_with_the_table_saying_why(deployed, tmp_path):
    root, cfg = deployed
    result = retrain(cfg, sarcastic(30), root / "deployed", tmp_path / "work", RetrainOptions(sabotage=True))
    assert result.status == "refused" and result.reasons[0].startswith("worse on base: macro_f1")
    assert "NOT PROPOSED: worse on base" in result.table and " worse" in result.table


# --- the job, on the real broker and Redis --------------------------------------------------------------------

def committed_total(s, group: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    from affectstream.streaming.worker.kafka_config import bootstrap_servers

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers(s), group_id=group, enable_auto_commit=False)
    try:
        return sum(consumer.committed(TopicPartition(s.kafka.topic_feedback, p)) or 0
                   for p in consumer.partitions_for_topic(s.kafka.topic_feedback) or ())
    finally:
        consumer.close(autocommit=False)


def classified(s, posts: list[CorrectedPost], model: str) -> None:
    """What the classify stage leaves in Redis for each post: its result and its input."""
    r = sync_redis(s)
    try:
        for p in posts:
            result = {"id": p.post_id, "label": "positive", "model": model, "brands": [],
                      "scores": {"negative": 0.1, "neutral": 0.1, "positive": 0.8}}
            r.set(s.keys.post(p.post_id), orjson.dumps(result))
            r.set(s.keys.post_input(p.post_id), orjson.dumps({"text": p.text, "caption": None, "brands": [],
                                                              "label": "positive", "model": model}))
    finally:
        r.close()


def corrections_of(posts: list[CorrectedPost]) -> list[bytes]:
    return [orjson.dumps({"post_id": p.post_id, "label": p.label, "analyst": p.analyst, "ts": p.ts}) for p in posts]


@pytest.mark.integration
def test_the_retrain_job_takes_what_the_intake_kept_registers_a_candidate_and_refuses_a_bad_one(
        broker, redis_server, deployed, tmp_path):
    from affectstream.streaming.tools.producer import produce_lines

    root, _ = deployed
    s = stream_settings(broker, redis_server, model_dir=str(root / "deployed"), model_registry=str(tmp_path / "reg"))
    env = {**settings_env(s), "AFFECTSTREAM_CACHE": str(tmp_path / "cache")}
    job = ["retrain", "--preset", "tiny", "--dataset", "jsonl", "--data-path", str(root / "base.jsonl"), "--epochs", "4"]
    first, later = sarcastic(30), sarcastic(6, start=30, analyst="bob")   # ana's minute is full (30)
    classified(s, first + later, "v1")
    bad = [orjson.dumps({"post_id": "ghost", "label": "negative", "analyst": "ana", "ts": T0}), b"{nope"]
    with workers_running([WorkerProcess(s, "monitor")]) as procs:
        produce_lines(s, corrections_of(first) + bad, topic=s.kafka.topic_feedback)
        wait_for(lambda: committed_total(s, intake_group(s)) == 32, 90, procs, "the intake to take in 32 records")
        # where MLflow is installed (mlflow-skinny is enough), the first run also logs there
        tracked = {"MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"} if MLFLOW else {}
        run = CliRunner().invoke(main, job, env={**env, **tracked}, catch_exceptions=False)
        assert run.exit_code == 0, run.output
        assert "read 32, kept 30" in run.output and "not_accepted_by_intake" in run.output and "registered v2" in run.output
        if MLFLOW:
            assert "mlflow: run " in run.output and "registered version 1" in run.output

        reg = Registry(tmp_path / "reg")
        assert reg.versions() == ["v1", "v2"] and reg.current() == "v1"   # proposed, not deployed
        lineage = reg.lineage("v2")
        assert lineage["base_version"] == "v1" and sum(lineage["feedback_offsets"].values()) == 32
        assert lineage["feedback_store"]["records"] == 30 and len(lineage["data"]["corrections"]) == 64
        assert "## Retraining" in (reg.version_dir("v2") / "card.md").read_text()
        assert json.loads((reg.version_dir("v2") / "metrics.json").read_text())["retrain"]["decision"]["proposed"]
        if any(flag in cpu_flags() for flag in INT8_FLAGS):   # the version's own int8 gate, bound to its weights
            assert read_gate(reg.version_dir("v2")) is not None and "int8 serving gate" in run.output

        again = CliRunner().invoke(main, job, env=env, catch_exceptions=False)   # nothing new since v2
        assert again.exit_code == 0 and "read 0, kept 0" in again.output and "no new corrections since v2" in again.output

        produce_lines(s, corrections_of(later), topic=s.kafka.topic_feedback)
        wait_for(lambda: committed_total(s, intake_group(s)) == 38, 90, procs, "the intake to take in 6 more")
        flood = CliRunner().invoke(main, job, env=env, catch_exceptions=False)
        # 36 corrections now move posts out of 'positive', which has 64 base training examples: over half
        assert flood.exit_code == 3 and "read 6, kept 6" in flood.output
        assert "NOT PROPOSED: class_flood: 36 corrections move posts out of 'positive'" in flood.output
        sabotaged = CliRunner().invoke(main, [*job, "--max-class-flip", "0.9", "--sabotage"], env=env,
                                       catch_exceptions=False)
    assert sabotaged.exit_code == 3, sabotaged.output
    assert "read 0, kept 0" in sabotaged.output and "NOT PROPOSED: worse on base" in sabotaged.output
    assert Registry(tmp_path / "reg").versions() == ["v1", "v2"]                  # the bad candidate is not registered
    assert committed_total(s, s.kafka.app_id + "-retrain") == 38


@pytest.mark.skipif(not MLFLOW, reason="needs mlflow (pip install mlflow-skinny)")
def test_a_registered_candidate_is_logged_and_registered_in_mlflow(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from affectstream.streaming.tools.retrain_job import log_to_mlflow
    from affectstream.training.retrain import Decision, Mix, RetrainResult
    from tests.test_registry import fake_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3 wants a database; a folder is enough here
    reg = Registry(tmp_path / "reg")
    version = reg.add(fake_model(tmp_path / "m"), {"base_version": None})
    rows = [{"test set": "vader", "n": 420, "deployed macro_f1": 0.70, "candidate macro_f1": 0.71, "verdict": "decides"}]
    result = RetrainResult("proposed", [], "table", Mix([], []), Decision(True, [], rows))
    lineage = {"base_version": "v0", "options": {"correction_weight": 3}, "data": {"corrections": "abc"}}
    first = log_to_mlflow(reg, version, result, lineage)
    second = log_to_mlflow(reg, version, result, lineage)
    client = MlflowClient()
    run = client.get_run(first["run_id"])
    assert run.data.params["base_version"] == "v0" and run.data.params["option.correction_weight"] == "3"
    assert run.data.metrics["vader.candidate_macro_f1"] == pytest.approx(0.71)
    assert (first["registered_version"], second["registered_version"]) == ("1", "2")
    model = client.get_model_version("affectstream", "1")
    assert model.tags["registry_version"] == "v1" and model.run_id == first["run_id"]
    assert {a.path for a in client.list_artifacts(first["run_id"], "model")} >= {"model/config.json", "model/lineage.json"}
