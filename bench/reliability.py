"""The reliability table: fault scenarios run on the real broker and Redis, summarised in Markdown.

The scenarios are the tests in ``tests/test_faults.py`` and ``tests/test_hostile_inputs.py``; each one
calls :func:`record` with what it measured (messages in, results, dead letters, posts lost, posts
counted twice). ``affectstream reliability`` runs those tests with ``AFFECTSTREAM_RELIABILITY_JSON``
pointing at a fresh file, reads the rows back and prints the table (and writes it to
``docs/reliability.md`` with ``--out``). So the README's table is produced by a command, never by hand.

    affectstream reliability                 # CI sizes (about 2,000 hostile messages)
    affectstream reliability --full          # 10,000 hostile messages (AFFECTSTREAM_FULL_FAULTS=1)
    affectstream reliability --from-json rows.json   # only render rows a test run already wrote
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import orjson

JSON_ENV = "AFFECTSTREAM_RELIABILITY_JSON"
FULL_ENV = "AFFECTSTREAM_FULL_FAULTS"
ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = ("tests/test_faults.py", "tests/test_hostile_inputs.py")
DEFAULT_OUT = ROOT / "docs" / "reliability.md"


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
def reliability(full: bool, from_json: str | None, out: str | None, keyword: str | None) -> None:
    """Run the fault scenarios (worker crash, Redis and broker outages, failing captioner, hostile input)
    on a real broker and Redis and print the reliability table in Markdown."""
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
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table)
    if rc != 0:
        sys.exit(rc)


if __name__ == "__main__":
    reliability()
