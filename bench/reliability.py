"""The reliability table: fault scenarios run on the real broker and Redis, summarised in Markdown.

The scenarios are the tests in ``tests/test_faults.py`` and ``tests/test_hostile_inputs.py``; each one
calls :func:`record` with what it measured (messages in, results, dead letters, posts lost, posts
counted twice). ``affectstream reliability`` runs those tests with ``AFFECTSTREAM_RELIABILITY_JSON``
pointing at a fresh file, reads the rows back and prints the table (and writes it to
``docs/reliability.md`` with ``--out``, keeping that page's notes below its marker line). So the table is
produced by a command, never by hand.

    affectstream reliability                 # CI sizes (about 2,000 hostile messages)
    affectstream reliability --full          # 10,000 hostile messages (AFFECTSTREAM_FULL_FAULTS=1)
    affectstream reliability --from-json rows.json   # only render rows a test run already wrote
    affectstream reliability --chaos         # the chaos run (bench/chaos.py), 3,000 messages, CI size
    affectstream reliability --chaos --chaos-posts 100000 --out docs/reliability.md   # full size; the
                                             # chaos row replaces the file's previous chaos row
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click
import orjson

if TYPE_CHECKING:
    from affectstream.bench.chaos import ChaosReport

JSON_ENV = "AFFECTSTREAM_RELIABILITY_JSON"
FULL_ENV = "AFFECTSTREAM_FULL_FAULTS"
ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = ("tests/test_faults.py", "tests/test_hostile_inputs.py")
DEFAULT_OUT = ROOT / "docs" / "reliability.md"
CHAOS_PREFIX = "chaos run"   # the fault cell of a chaos row starts with this
# docs/reliability.md: the generated table above this line, hand-written notes below it (kept on every write)
NOTES_MARKER = "<!-- end of the generated table: `affectstream reliability --out` keeps the text below -->"


@dataclass
class Row:
    fault: str            # fault or input class
    messages: int         # messages sent
    results: int          # distinct posts with a result in Redis
    dlq: int              # dead letters (each with a reason)
    lost: int             # posts that should have a result and have none (nor a dead letter)
    double_counted: int   # posts counted more than once in the per-brand buckets
    notes: str = ""       # what was done, and any honest limit
    seconds: float = 0.0


def record(fault: str, *, messages: int, results: int, dlq: int, lost: int, double_counted: int,
           notes: str = "", seconds: float = 0.0, path: str | None = None) -> Row:
    """Append one measured row to the JSON-lines file named by AFFECTSTREAM_RELIABILITY_JSON (if set)."""
    row = Row(fault, int(messages), int(results), int(dlq), int(lost), int(double_counted), notes,
              round(float(seconds), 1))
    target = path or os.environ.get(JSON_ENV)
    if target:
        with open(target, "ab") as f:
            f.write(orjson.dumps(asdict(row)) + b"\n")
    return row


def read_rows(path: str | Path) -> list[Row]:
    rows = []
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            rows.append(Row(**orjson.loads(line)))
    return rows


def markdown_table(rows: list[Row], *, title: str | None = None, footer: str | None = None) -> str:
    """Rows -> a Markdown table (fault/input class, messages, results, DLQ, lost, double-counted, notes)."""
    out = []
    if title:
        out += [title, ""]
    out.append("| fault / input class | messages | results | DLQ | lost | double-counted | notes |")
    out.append("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        notes = r.notes.replace("|", "\\|").replace("\n", " ")
        out.append(f"| {r.fault} | {r.messages:,} | {r.results:,} | {r.dlq:,} | {r.lost} | {r.double_counted} "
                   f"| {notes} |")
    if footer:
        out += ["", footer]
    return "\n".join(out) + "\n"


def merge_chaos_row(markdown: str, row: Row, footer: str) -> str:
    """``markdown`` (a table ``markdown_table`` wrote) with ``row`` in place of its chaos row, or appended
    to the table, and ``footer`` in place of the previous chaos footer (a paragraph starting "Chaos row")."""
    line = markdown_table([row]).splitlines()[-1]
    lines = [x for x in markdown.splitlines() if not x.startswith(f"| {CHAOS_PREFIX}")]
    lines = [x for x in lines if not x.startswith("Chaos row")]
    last = max((i for i, x in enumerate(lines) if x.startswith("|")), default=None)
    if last is None:
        return markdown_table([row], title="## Reliability under faults and hostile input", footer=footer)
    lines.insert(last + 1, line)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines + ["", footer]) + "\n"


def keep_chaos_row(previous: str, table: str) -> str:
    """``table`` with the chaos row and its footer carried over from ``previous`` (the chaos run is a
    separate command: regenerating the fault scenarios must not drop its row)."""
    row = next((x for x in previous.splitlines() if x.startswith(f"| {CHAOS_PREFIX}")), None)
    footer = next((x for x in previous.splitlines() if x.startswith("Chaos row")), None)
    if row is None:
        return table
    lines = table.rstrip("\n").splitlines()
    last = max(i for i, x in enumerate(lines) if x.startswith("|"))
    lines.insert(last + 1, row)
    return "\n".join(lines + (["", footer] if footer else [])) + "\n"


def write_keeping_notes(target: Path, render: Callable[[str], str]) -> None:
    """Replace the generated part of ``target`` (all of it, or what comes before ``NOTES_MARKER``) with
    ``render(that part)``; the hand-written notes after the marker stay as they are."""
    previous = target.read_text() if target.exists() else ""
    generated, marker, notes = previous.partition(NOTES_MARKER)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(generated) + (f"\n{marker}{notes}" if marker else ""))


def chaos_row(r: "ChaosReport") -> Row:
    """The reliability-table row for a chaos run (the seed in its name, so it can be replayed)."""
    a, w = r.audit, r.workload
    applied = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(r.applied.items()))
    if r.skipped:
        applied += f" ({r.skipped} more skipped: every post had its result)"
    hostile_ok = a.hostile_in_dlq == a.hostile and not a.hostile_wrong_reason
    text_only = sum(n for error, n in a.image_errors.items() if error != "None")
    notes = (f"{w['valid']:,} valid posts ({w['image_posts']:,} with images), {w['duplicates']:,} duplicate sends, "
             f"{w['hostile']:,} hostile; 2 caption + 2 classify workers; faults: {applied}; "
             f"{r.posts_per_s:.1f} posts/s under chaos (sent {r.pace}); {text_only:,} image posts went on "
             f"text-only (captioner failing or slow); every hostile message in the DLQ "
             f"with its reason: {'yes' if hostile_ok else 'NO'}; brand counts = recount: "
             f"{'yes' if not (a.counts_over or a.counts_under) else 'NO'}; {a.topic_redelivered:,} redelivered "
             f"records on the sentiment topic, {a.dlq_records:,} on the DLQ; worker RSS peak "
             f"{r.rss_peak_mb:.0f} MB (bound {r.config.rss_limit_mb:.0f})")
    return Row(f"chaos run, seed {r.config.seed}", r.workload["messages"], a.stored, a.hostile_in_dlq, a.lost,
               a.counts_over, notes, round(r.seconds, 1))


def run_chaos_row(out: str | None, **options) -> int:
    """The chaos run (bench/chaos.py): print its summary and row; with ``out``, merge the row into that
    file. Exit status 1 when an invariant failed."""
    from affectstream.bench.chaos import ChaosConfig, run_chaos

    cfg = ChaosConfig(**{k: v for k, v in options.items() if v is not None})
    report = run_chaos(cfg, echo=lambda line: click.echo(line, err=True))
    row = chaos_row(report)
    command = " ".join([f"affectstream reliability --chaos --chaos-posts {cfg.posts} --chaos-seed {cfg.seed}"]
                       + [f"--chaos-{flag} {value:g}" if isinstance(value, float) else f"--chaos-{flag} {value}"
                          for flag, value in (("model", options.get("model_dir")), ("seconds", cfg.horizon_s or None),
                                              ("rate", cfg.rate)) if value is not None])
    footer = (f"Chaos row: `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
              f"({report.seconds:.0f} s; invariants {'hold' if report.ok else 'FAILED'}; model {cfg.model_dir}). "
              "Faults from a seeded schedule (`bench/chaos_schedule.py`): SIGKILLed workers restarted, Redis "
              "stopped and restarted on its AOF, the broker frozen (SIGSTOP), the captioner slow or failing. "
              "*results* = valid posts with exactly one stored result; *double-counted* = bucket counts above a "
              "recount from the produced posts and the stored labels.")
    click.echo(markdown_table([row], footer=footer))
    if out:
        write_keeping_notes(Path(out), lambda previous: merge_chaos_row(previous, row, footer))
    return 0 if report.ok else 1


def run_scenarios(json_path: str, *, full: bool = False, pytest_args: tuple[str, ...] = ()) -> int:
    """Run the fault tests (real Tansu broker, real redis-server) writing rows to ``json_path``."""
    env = dict(os.environ)
    env[JSON_ENV] = json_path
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if full:
        env[FULL_ENV] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES, *pytest_args]
    return subprocess.call(cmd, cwd=str(ROOT), env=env)


@click.command("reliability")
@click.option("--full", is_flag=True, help="10,000 hostile messages instead of the CI size (about 2,000).")
@click.option("--from-json", "from_json", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Render rows an earlier run wrote instead of running the scenarios.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help=f"Also write the table to this file (e.g. {DEFAULT_OUT.relative_to(ROOT)}).")
@click.option("-k", "keyword", default=None, help="Only the scenarios whose test names match (pytest -k).")
@click.option("--chaos", is_flag=True, help="Run the chaos run instead of the fault scenarios (bench/chaos.py); "
              "with --out its row replaces the file's previous chaos row.")
@click.option("--chaos-posts", type=int, default=None,
              help="Chaos run: messages sent (default 3,000; full size 100,000).")
@click.option("--chaos-seed", type=int, default=None,
              help="Chaos run: the seed of its schedule and posts (default 13).")
@click.option("--chaos-model", default=None, help="Chaos run: the classify workers' model directory "
              "(default models/default).")
@click.option("--chaos-seconds", type=float, default=None,
              help="Chaos run: faults start within this many seconds (default: messages/25, 60 to 600).")
@click.option("--chaos-rate", type=float, default=None,
              help="Chaos run: messages/s sent (default: spread over 3/4 of the schedule; 0: one burst).")
@click.option("--chaos-dir", default=None, help="Chaos run: keep logs and the Redis data here.")
def reliability(full: bool, from_json: str | None, out: str | None, keyword: str | None, chaos: bool,
                chaos_posts: int | None, chaos_seed: int | None, chaos_model: str | None,
                chaos_seconds: float | None, chaos_rate: float | None, chaos_dir: str | None) -> None:
    """Run the fault scenarios (worker crash, Redis and broker outages, failing captioner, hostile input)
    on a real broker and Redis and print the reliability table in Markdown; --chaos: the chaos run."""
    if chaos:
        sys.exit(run_chaos_row(out, posts=chaos_posts, seed=chaos_seed, model_dir=chaos_model,
                               horizon_s=chaos_seconds, rate=chaos_rate, workdir=chaos_dir))
    started = time.monotonic()
    rc = 0
    if from_json:
        rows = read_rows(from_json)
    else:
        fd, path = tempfile.mkstemp(prefix="affectstream-reliability-", suffix=".jsonl")
        os.close(fd)
        rc = run_scenarios(path, full=full, pytest_args=("-k", keyword) if keyword else ())
        rows = read_rows(path)
        os.unlink(path)
    if not rows:
        raise click.ClickException("no scenario reported a row (did the tests run?)")
    footer = (f"Generated by `affectstream reliability{' --full' if full else ''}` on "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
              f"({time.monotonic() - started:.0f} s; tests exit status {rc}). "
              "Real Tansu broker and real redis-server on 127.0.0.1; nothing mocked. "
              "*lost* = posts with neither a result nor a dead letter; *double-counted* = posts counted more "
              "than once in the per-brand Redis buckets.")
    table = markdown_table(rows, title="## Reliability under faults and hostile input", footer=footer)
    click.echo(table)
    if out:
        write_keeping_notes(Path(out), lambda previous: keep_chaos_row(previous, table))
    if rc != 0:
        sys.exit(rc)


if __name__ == "__main__":
    reliability()
