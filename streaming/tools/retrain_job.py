"""``affectstream retrain``: the one-shot retraining job, the I/O part (``training.retrain`` is the rest).

1. **Read** the ``feedback`` topic with kafka-python from the job's own committed offsets (group
   ``<app_id>-retrain``), but only up to what the monitor's intake agent has committed (group
   ``<app_id>-monitor``): a record the intake has not taken in yet stays for the next run.
2. **Keep** each correction the intake accepted — it is in the post's history (``RedisKeys.feedback``);
   rejected ones (DLQ) are counted and skipped — joined with the post as the model read it
   (``RedisKeys.post_input``: text, caption, brands), in the job's own store
   ``<registry>/feedback/corrections.jsonl``: the posts' stored inputs expire (``result_ttl_s``), the store
   does not. Only then are the offsets committed, so a crash re-reads, never loses.
3. **Retrain** on every correction in the store (not only the new ones: a candidate learns them all),
   ``training.retrain.retrain``: mix, flood guard, train, one table, decide.
4. **Register** a proposed candidate: ``Registry.add`` with its card (a "Retraining" section with the
   table), metrics (``retrain`` key) and lineage (base version, feedback offsets, data hashes, options).
   With ``MLFLOW_TRACKING_URI`` set, the run is also logged to MLflow and the version registered there
   (``mlflow`` imported only then). Promotion stays a decision: ``affectstream model shadow|canary|promote``.
5. **Gate int8** for the registered version where the CPU has int8 units (``training.int8_gate``): a gate
   is bound to the weights' hash, so without this a promoted candidate would fall back from int8 to torch
   under ``AFFECTSTREAM_INFERENCE_BACKEND=auto``. Its result goes next to the version and into the report.

An empty registry is bootstrapped from ``settings.classify.model_dir`` (added as v1 and promoted), so the job has a
deployed version to compare against and to name as the candidate's base.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from affectstream.model.registry import Registry
from affectstream.streaming.worker.feedback import FeedbackError, intake_group, parse_correction
from affectstream.streaming.worker.kafka_config import bootstrap_servers, kafka_client_kwargs
from affectstream.streaming.worker.redis_client import sync_redis
from affectstream.streaming.worker.settings import Settings
from affectstream.training.config import TrainConfig
from affectstream.training.int8_gate import run_gate
from affectstream.training.retrain import CorrectedPost, RetrainOptions, RetrainResult, retrain

log = logging.getLogger("affectstream.retrain")

GROUP_SUFFIX = "-retrain"
READ_TIMEOUT_S = 120.0


@dataclass
class Intake:
    """What one run read from the topic and what became of it."""
    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)   # partition -> next offset, after this run

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass
class JobReport:
    status: str                       # proposed | refused | nothing_to_do
    intake: Intake
    base_version: str
    version: str | None = None        # the registered candidate, when proposed
    result: RetrainResult | None = None
    mlflow: dict | None = None
    reason: str = ""                  # why nothing was trained, when nothing was
    int8_gate: dict | None = None     # the registered version's int8 gate, where measured

    @property
    def table(self) -> str:
        text = self.result.table if self.result else self.reason + "\n"
        return text + (self.int8_gate["card_line"] + "\n" if self.int8_gate else "")


# --- 1 + 2: read the topic into the store -------------------------------------------------------------

def store_path(registry: Registry) -> Path:
    return registry.root / "feedback" / "corrections.jsonl"


def read_store(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _accepted(redis, settings: Settings, raw: bytes) -> tuple[dict | None, dict | None, str]:
    """(the stored correction, the post's input, "") for a record the intake kept, else (None, None, reason)."""
    try:
        c = parse_correction(raw)
    except FeedbackError as e:
        return None, None, e.reason
    keys = settings.keys
    history = [orjson.loads(h) for h in redis.lrange(keys.feedback(c.post_id), 0, -1)]
    same = [h for h in history if (h.get("target"), h.get("label"), h.get("analyst"), h.get("ts"))
            == (c.target, c.label, c.analyst, c.ts)]
    if not same:
        return None, None, "not_accepted_by_intake"
    post = redis.get(keys.post_input(c.post_id))
    if post is None:
        return None, None, "no_post_input"
    return same[0], orjson.loads(post), ""


def take_feedback(settings: Settings, registry: Registry, group: str, timeout_s: float = READ_TIMEOUT_S) -> Intake:
    """Steps 1 and 2 of the module docstring; returns what was read and kept."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    topic = settings.kafka.topic_feedback
    common = dict(bootstrap_servers=bootstrap_servers(settings), enable_auto_commit=False,
                  auto_offset_reset="earliest", **kafka_client_kwargs(settings))
    consumer = KafkaConsumer(group_id=group, client_id="affectstream-retrain", **common)
    intake_view = KafkaConsumer(group_id=intake_group(settings), client_id="affectstream-retrain-lag", **common)
    redis = sync_redis(settings)
    out = Intake()
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        limits = {tp: intake_view.committed(tp) or 0 for tp in tps}   # what the intake has taken in
        consumer.assign(tps)
        for tp in tps:
            if consumer.committed(tp) is None:
                consumer.seek_to_beginning(tp)
        start = {tp: consumer.position(tp) for tp in tps}
        done = dict(start)                                         # next offset to read, per partition
        pending = {tp for tp in tps if start[tp] < limits[tp]}
        path = store_path(registry)
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        with open(path, "ab") as store:
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"feedback topic: partitions {sorted(tp.partition for tp in pending)} "
                                       f"did not reach the intake's offsets within {timeout_s:.0f} s")
                for tp, records in consumer.poll(timeout_ms=500).items():
                    for record in records:
                        if record.offset >= limits[tp]:
                            continue  # past the intake: the next run reads it
                        done[tp] = record.offset + 1
                        out.read += 1
                        correction, post, reason = _accepted(redis, settings, record.value or b"")
                        if reason:
                            out.skip(reason)
                            continue
                        store.write(orjson.dumps({"partition": tp.partition, "offset": record.offset,
                                                  "correction": correction, "post": post}) + b"\n")
                        out.kept += 1
                    if done[tp] >= limits[tp] or consumer.position(tp) >= limits[tp]:
                        consumer.pause(tp)
                        pending.discard(tp)
            store.flush()
            os.fsync(store.fileno())
        consumer.commit({tp: OffsetAndMetadata(done[tp], "", -1) for tp in tps})  # only now: all kept on disk
        out.offsets = {tp.partition: done[tp] for tp in tps}
        return out
    finally:
        consumer.close(autocommit=False)
        intake_view.close(autocommit=False)
        redis.close()


def corrected_posts(rows: list[dict]) -> list[CorrectedPost]:
    return [CorrectedPost(post_id=r["correction"]["post_id"], target=r["correction"].get("target"),
                          text=r["post"].get("text") or "", caption=r["post"].get("caption") or "",
                          label=r["correction"]["label"], old_label=r["correction"].get("old_label", ""),
                          analyst=r["correction"]["analyst"], ts=int(r["correction"]["ts"]),
                          model=r["correction"].get("model", "")) for r in rows]


# --- 3 + 4: retrain and register ----------------------------------------------------------------------

def ensure_deployed(registry: Registry, settings: Settings) -> str:
    """The deployed version; an empty registry gets ``settings.classify.model_dir`` as v1, promoted."""
    current = registry.current()
    if current:
        return current
    version = registry.add(settings.classify.model_dir, {"base_version": None, "reason": f"bootstrap from {settings.classify.model_dir}"})
    registry.promote(version, f"bootstrap from {settings.classify.model_dir}")
    return version


def run_retrain(settings: Settings, cfg: TrainConfig, options: RetrainOptions = RetrainOptions(), *,
                registry_root: str | None = None, work_dir: str | None = None, progress: bool = False) -> JobReport:
    """The whole job (module docstring). ``cfg``: the training preset the candidate is trained with."""
    root = registry_root or settings.classify.model_registry
    if not root:
        raise ValueError("retrain needs a model registry: --registry DIR or AFFECTSTREAM_MODEL_REGISTRY")
    registry = Registry(root)
    base_version = ensure_deployed(registry, settings)
    intake = take_feedback(settings, registry, settings.kafka.app_id + GROUP_SUFFIX)
    rows = read_store(store_path(registry))
    log.info("feedback: read %d, kept %d, skipped %s; %d corrections in the store", intake.read, intake.kept,
             intake.skipped, len(rows))
    store_sha = file_sha256(store_path(registry))
    trained_on = {v: registry.lineage(v).get("feedback_store", {}).get("sha256") for v in registry.versions()}
    same = [v for v, sha in trained_on.items() if sha == store_sha]
    if intake.kept == 0 and same:
        return JobReport(status="nothing_to_do", intake=intake, base_version=base_version,
                         reason=f"no new corrections since {same[-1]} was trained on the same {len(rows)}")
    work = Path(work_dir or registry.root / "work" / time.strftime("%Y%m%dT%H%M%S"))
    result = retrain(cfg, corrected_posts(rows), registry.current_dir().resolve(), work, options, progress=progress)
    shutil.rmtree(work / "run", ignore_errors=True)   # checkpoints and optimizer state: only a resume needs them
    report = JobReport(status=result.status, intake=intake, base_version=base_version, result=result)
    if result.status != "proposed":
        return report                                 # a refused candidate stays in the work dir, for a look
    lineage = {"base_version": base_version, "feedback_offsets": {str(p): o for p, o in intake.offsets.items()},
               "feedback_store": {"path": str(store_path(registry)), "records": len(rows), "sha256": store_sha},
               "data": result.data, "options": asdict(options), "preset": asdict(cfg),
               "retrain_counts": result.mix.counts, "seconds": result.seconds,
               "reason": "retrained with analysts' corrections"}
    attach_retrain(result)
    report.version = registry.add(result.candidate_dir, lineage)
    shutil.rmtree(result.candidate_dir, ignore_errors=True)   # the registry holds the copy
    report.int8_gate = measure_int8_gate(registry.version_dir(report.version))
    if os.environ.get("MLFLOW_TRACKING_URI"):
        report.mlflow = log_to_mlflow(registry, report.version, result, lineage)
    return report


def measure_int8_gate(model_dir: Path, data_root: str | Path | None = None) -> dict | None:
    """Step 5 (module docstring): the version's int8 gate, written next to it; None where the CPU has no
    int8 units (`auto` never serves int8 there) or the gate's test sets cannot be read."""
    from affectstream.model.serving import INT8_FLAGS, cpu_flags

    if not any(flag in cpu_flags() for flag in INT8_FLAGS):
        return None
    try:
        return run_gate(model_dir, data_root, say=log.info)
    except (OSError, RuntimeError, ValueError) as e:  # VADER neither cached nor fetchable, an export failure
        log.warning("int8 gate not measured for %s: %s: %s", model_dir, type(e).__name__, e)
        return None


def attach_retrain(result: RetrainResult) -> None:
    """The table into the candidate's card (a "Retraining" section) and metrics.json (``retrain``)."""
    directory = Path(result.candidate_dir)
    card = directory / "card.md"
    body = ("\n## Retraining\n\nTrained with analysts' corrections (`affectstream retrain`, "
            "`training/retrain.py`: weighting, de-duplication, held-out share and the decision rule).\n\n"
            "```text\n" + result.table.rstrip() + "\n```\n")
    card.write_text((card.read_text() if card.is_file() else "").rstrip("\n") + "\n" + body)
    metrics_path = directory / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["retrain"] = {"decision": result.decision.to_dict() if result.decision else None,
                          "counts": result.mix.counts, "data": result.data, "seconds": result.seconds}
    metrics_path.write_text(json.dumps(metrics, indent=2, default=str))


def log_to_mlflow(registry: Registry, version: str, result: RetrainResult, lineage: dict,
                  model_name: str = "affectstream") -> dict[str, Any]:
    """Log the run (params, the table's figures, the lineage, the version directory as artifacts) and add a
    version of the MLflow registered model ``model_name`` whose source is those artifacts, tagged with the
    on-disk version id. ``mlflow`` (``mlflow-skinny`` is enough) is imported only here, when
    ``MLFLOW_TRACKING_URI`` is set."""
    import mlflow
    from mlflow import MlflowClient

    with mlflow.start_run(run_name=f"retrain-{version}") as run:
        mlflow.log_params({"base_version": lineage["base_version"], "version": version,
                           **{f"option.{k}": v for k, v in lineage["options"].items()}})
        for row in result.decision.rows if result.decision else ():
            slug = "".join(ch if ch.isalnum() else "_" for ch in row["test set"])
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    mlflow.log_metric(f"{slug}.{key.replace(' ', '_')}", float(value))
        mlflow.log_dict(lineage, "lineage.json")
        mlflow.log_artifacts(str(registry.version_dir(version)), artifact_path="model")
    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{model_name}'"):
        client.create_registered_model(model_name, description="affectstream aligned sentiment models")
    registered = client.create_model_version(model_name, source=f"{run.info.artifact_uri}/model",
                                             run_id=run.info.run_id,
                                             tags={"registry_version": version,
                                                   "base_version": str(lineage["base_version"])})
    return {"run_id": run.info.run_id, "registered_version": str(registered.version)}
