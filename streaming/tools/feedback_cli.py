"""Commands for corrections and model versions: ``affectstream feedback FILE.jsonl``, ``affectstream retrain``
and ``affectstream model list|promote|rollback|shadow|canary|off|history``.

The CLI's ``settings_options`` decorator lives a layer above (``affectstream.cli``), so it is handed in:
``commands(settings_options)`` returns the click commands for the CLI to add.

``feedback FILE.jsonl`` checks every line as the intake will (``feedback``: shape, stored result, label set,
target, the analyst's minute), produces the accepted ones to the ``feedback`` topic keyed by post id, and
prints accepted/rejected counts with the reasons; exit status 0 when every line was accepted, 1 when some
were rejected. A line without ``ts`` is stamped with the time of the import. The intake checks again (it is
the authority): what it rejects lands in the DLQ.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import click
import orjson

from affectstream.streaming.worker.feedback import (RATE_PER_MINUTE, Correction, FeedbackError, check_against_result,
                                                    now_ms, parse_correction, rate_key)
from affectstream.streaming.worker.settings import Settings

CHECK_CHUNK = 500     # posts read from Redis per round trip


@dataclass
class BulkReport:
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)   # the first few rejections, "line N: reason: message"

    def reject(self, lineno: int, error: FeedbackError) -> None:
        self.rejected[error.reason] += 1
        if len(self.examples) < 10:
            self.examples.append(f"line {lineno}: {error.reason}: {error}")


def check_bulk(settings: Settings, lines: list[bytes], rate_limit: int = RATE_PER_MINUTE,
               now: int | None = None) -> tuple[list[Correction], BulkReport]:
    """Every line checked as the intake will; the analysts' minutes count the corrections already taken in
    (the Redis counters) plus those earlier in the file."""
    from affectstream.streaming.worker.redis_client import sync_redis

    now = now if now is not None else now_ms()
    report, parsed = BulkReport(), []
    for lineno, line in enumerate(lines, start=1):
        try:
            parsed.append((lineno, parse_correction(line, default_ts=now, now=now)))
        except FeedbackError as e:
            report.reject(lineno, e)
    accepted: list[Correction] = []
    redis = sync_redis(settings)
    try:
        sent: Counter = Counter()
        for start in range(0, len(parsed), CHECK_CHUNK):
            chunk = parsed[start:start + CHECK_CHUNK]
            stored = _get_many(redis, [settings.keys.post(c.post_id) for _, c in chunk])
            counters = _get_many(redis, [rate_key(settings.keys, c) for _, c in chunk])
            for (lineno, c), result, counted in zip(chunk, stored, counters):
                try:
                    c = check_against_result(c, result)
                    key = rate_key(settings.keys, c)
                    sent[key] += 1
                    if int(counted or 0) + sent[key] > rate_limit:
                        raise FeedbackError("rate_limited", f"analyst {c.analyst!r}: more than {rate_limit} "
                                                            "corrections in one minute", c.post_id)
                except FeedbackError as e:
                    report.reject(lineno, e)
                    continue
                accepted.append(c)
    finally:
        redis.close()
    report.accepted = len(accepted)
    return accepted, report


def _get_many(redis, keys: list[str]) -> list:
    """GET of every key in one round trip per node (a pipeline: a cluster client splits it by slot)."""
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    return pipe.execute()


def produce_corrections(settings: Settings, corrections: list[Correction]) -> None:
    """Send to the feedback topic (key: post id); returns once the broker acknowledged them all."""
    from affectstream.streaming.tools.producer import make_producer

    producer = make_producer(settings)
    try:
        futures = [producer.send(settings.kafka.topic_feedback, key=c.post_id.encode(), value=c.to_json())
                   for c in corrections]
        producer.flush()
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close()


def _registry(settings: Settings, root: str | None):
    from affectstream.model.registry import Registry

    root = root or settings.classify.model_registry
    if not root:
        raise click.UsageError("no model registry: pass --registry DIR or set AFFECTSTREAM_MODEL_REGISTRY")
    return Registry(root)


def _summary(metrics: dict) -> str:
    tests = metrics.get("test") or {}
    return "  ".join(f"{name} macro-F1 {m.get('macro_f1', 0):.4f}" for name, m in tests.items()
                     if isinstance(m, dict) and "macro_f1" in m)


def commands(settings_options: Callable) -> list[click.Command]:
    """The click commands, built with the CLI's settings decorator."""
    from affectstream.training.cli import OPTIONS, config_from
    from affectstream.training.config import PRESETS

    def train_options(fn: Callable) -> Callable:
        """The training flags a retrain may change: not those the settings own (device, threads, captioner:
        the preset's captioner trains), nor where the candidate is written (the job's)."""
        taken = {opt for p in getattr(settings_options(lambda **kw: None), "__click_params__", []) for opt in p.opts}
        for flag, name, kind in OPTIONS:
            if flag not in taken and flag not in ("--out", "--run-dir", "--version"):
                fn = click.option(flag, name, type=kind, default=None, help=f"Overrides TrainConfig.{name}.")(fn)
        fn = click.option("--extra", "extra_datasets", multiple=True, help="Also train on this dataset kind.")(fn)
        return click.option("--preset", type=click.Choice(sorted(PRESETS)), default="default", show_default=True,
                            help="The training preset the candidate is trained with.")(fn)

    registry_option = click.option("--registry", "registry_root", default=None,
                                   help="Registry root (default: settings.classify.model_registry).")

    @click.command("feedback")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
    @click.option("--dry-run", is_flag=True, help="Check only; produce nothing.")
    @settings_options
    def feedback(settings: Settings, file: str, dry_run: bool) -> None:
        """Check FILE.jsonl (one correction a line) and send the accepted ones to the feedback topic."""
        from affectstream.streaming.tools.producer import read_lines

        accepted, report = check_bulk(settings, list(read_lines(file)))
        if accepted and not dry_run:
            produce_corrections(settings, accepted)
        reasons = ", ".join(f"{reason} {n}" for reason, n in report.rejected.most_common())
        click.echo(f"{'checked' if dry_run else 'sent'} {report.accepted} corrections to {settings.kafka.topic_feedback}; "
                   f"rejected {sum(report.rejected.values())}{f' ({reasons})' if reasons else ''}")
        for example in report.examples:
            click.echo(f"  {example}", err=True)
        sys.exit(1 if report.rejected else 0)

    @click.command("retrain")
    @train_options
    @registry_option
    @click.option("--weight", "correction_weight", type=int, default=None, help="Copies of each training correction (3).")
    @click.option("--holdout-share", type=float, default=None, help="Share of corrected posts held out (0.2).")
    @click.option("--tolerance", type=float, default=None, help="Largest macro-F1 drop on a base test set still proposed (0.02).")
    @click.option("--max-class-flip", type=float, default=None,
                  help="Refuse when corrections move more than this share of a class's base examples out of it (0.5).")
    @click.option("--sabotage", is_flag=True, help="Drill: train with zero learning rates; the candidate must be refused.")
    @click.option("--work-dir", default=None, help="Where the candidate is trained (default: <registry>/work/<time>).")
    @settings_options
    def retrain_command(settings: Settings, registry_root: str | None, correction_weight: int | None,
                        holdout_share: float | None, tolerance: float | None, max_class_flip: float | None,
                        sabotage: bool, work_dir: str | None, **flags) -> None:
        """One-shot job: take in new corrections, train a candidate, compare, register it if it is not worse.

        Exit status: 0 proposed (or nothing to do), 3 refused."""
        import logging

        from affectstream.streaming.tools.retrain_job import run_retrain
        from affectstream.training.retrain import RetrainOptions

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("kafka").setLevel(logging.WARNING)   # its INFO is every connection's life story
        given = dict(correction_weight=correction_weight, holdout_share=holdout_share, tolerance=tolerance,
                     max_class_flip=max_class_flip)
        options = RetrainOptions(**{k: v for k, v in given.items() if v is not None}, sabotage=sabotage)
        root = _registry(settings, registry_root).root
        started = time.perf_counter()
        cfg = config_from(no_resume=True, **flags).replace(device=settings.worker.device, threads=settings.worker.threads)
        report = run_retrain(settings, cfg, options, registry_root=str(root), work_dir=work_dir)
        i = report.intake
        click.echo(f"feedback: read {i.read}, kept {i.kept}, skipped {dict(i.skipped) or 0}; offsets {i.offsets}")
        click.echo(report.table.rstrip())
        if report.version:
            click.echo(f"registered {report.version} (base {report.base_version}) in {root}; try it with "
                       f"`affectstream model shadow {report.version} --share 0.1`")
        if report.mlflow:
            click.echo(f"mlflow: run {report.mlflow['run_id']}, registered version {report.mlflow['registered_version']}")
        click.echo(f"retrain {report.status} in {time.perf_counter() - started:.1f} s")
        sys.exit(3 if report.status == "refused" else 0)

    @click.group("model")
    def model() -> None:
        """Model versions in the registry: list, promote, roll back, shadow, canary."""

    @model.command("list")
    @registry_option
    @settings_options
    def model_list(settings: Settings, registry_root: str | None) -> None:
        """Every version, the deployed one marked, with its test figures and base."""
        reg = _registry(settings, registry_root)
        rollout = reg.rollout()
        for version in reg.versions():
            mark = "*" if version == rollout.current else ("~" if version == rollout.candidate else " ")
            base = reg.lineage(version).get("base_version") or "-"
            click.echo(f"{mark} {version:<6} base {base:<6} {_summary(reg.metrics(version))}")
        click.echo(f"deployed {rollout.current or '-'}; rollout {rollout.mode}"
                   + (f" {rollout.candidate} at {rollout.share:.0%}" if rollout.candidate else ""))

    @model.command("promote")
    @click.argument("version")
    @click.option("--reason", default="")
    @registry_option
    @settings_options
    def model_promote(settings: Settings, version: str, reason: str, registry_root: str | None) -> None:
        """Deploy VERSION: one atomic swap of the `current` link; workers reload on their next check."""
        _run(lambda: _registry(settings, registry_root).promote(version, reason))
        click.echo(f"deployed {version}")

    @model.command("rollback")
    @click.option("--reason", default="")
    @registry_option
    @settings_options
    def model_rollback(settings: Settings, reason: str, registry_root: str | None) -> None:
        """Deploy the version that was deployed before the current one."""
        click.echo(f"deployed {_run(lambda: _registry(settings, registry_root).rollback(reason))}")

    def rollout_command(mode: str, doc: str) -> click.Command:
        @click.argument("version", required=mode != "off")
        @click.option("--share", type=float, default=0.1, show_default=True,
                      help="shadow: share of posts also scored by VERSION; canary: share of partitions it serves.")
        @click.option("--reason", default="")
        @registry_option
        @settings_options
        def command(settings: Settings, share: float, reason: str, registry_root: str | None,
                    version: str | None = None) -> None:
            r = _run(lambda: _registry(settings, registry_root).set_rollout(version, mode, share, reason))
            click.echo(f"rollout {r.mode}" + (f": {r.candidate} at {r.share:.0%} beside {r.current}" if r.candidate else ""))

        command.__doc__ = doc
        return model.command(mode)(command)

    rollout_command("shadow", "Score a share of live posts with VERSION too (sentiment-shadow topic; never counted).")
    rollout_command("canary", "Serve a share of partitions with VERSION (rolled back automatically on the thresholds).")
    rollout_command("off", "End the shadow or canary rollout.")

    @model.command("history")
    @registry_option
    @settings_options
    def model_history(settings: Settings, registry_root: str | None) -> None:
        """Every add, promotion, rollback and rollout change, oldest first."""
        for entry in _registry(settings, registry_root).history():
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.get("ms", 0) / 1000))
            rest = {k: v for k, v in entry.items() if k not in ("ms", "event", "version") and v not in (None, "")}
            click.echo(f"{when}  {entry.get('event'):<8} {entry.get('version') or '-':<6} "
                       + " ".join(f"{k}={v}" for k, v in rest.items()))

    return [feedback, retrain_command, model]


def _run(action: Callable):
    from affectstream.model.registry import RegistryError

    try:
        return action()
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
