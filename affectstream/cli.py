"""The ``affectstream`` command line: wires flags and ``AFFECTSTREAM_*`` variables to settings, and settings
to the streaming pieces. Precedence: flags, then environment, then defaults (``Settings.load``).

Other packages add their commands to the same group::

    from affectstream.cli import main
    main.add_command(train)
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from affectstream.streaming.tools.sample import POSTS
from affectstream.streaming.worker.settings import ENV_PREFIX, SETTING_FIELDS, Settings, _coerce, env_name

# torch's OpenMP threads spin while waiting by default; on shared or oversubscribed cores that turns every
# small op into a wait for a descheduled thread (measured: naive inference 15 -> 70 posts/s). Must be set
# before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SAMPLE = POSTS  # the bundled demo sample

# flag -> (setting, click type, help). Every setting also has an AFFECTSTREAM_<NAME> variable and --set.
SETTING_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--broker": ("broker_url", str, "Kafka bootstrap, e.g. kafka://127.0.0.1:9092 (several: comma-separated)."),
    "--redis": ("redis_url", str, "Redis URL, e.g. redis://127.0.0.1:6379/0."),
    "--app-id": ("app_id", str, "Faust app id = consumer group."),
    "--partitions": ("partitions", int, "Partitions for topics this command creates."),
    "--model-dir": ("model_dir", str, "Deployed model directory (models/<version>)."),
    "--device": ("device", click.Choice(["auto", "cpu", "cuda"]), "Where the models run."),
    "--threads": ("threads", int, "Torch intra-op threads (0: torch default)."),
    "--captioner": ("captioner", str, "offline | none | vlm:<id or path>."),
    "--batch-max": ("batch_max", int, "Classify micro-batch size."),
    "--batch-window": ("batch_window_s", float, "Classify micro-batch wait, seconds."),
    "--caption-batch-max": ("caption_batch_max", int, "Caption micro-batch size."),
    "--caption-batch-window": ("caption_batch_window_s", float, "Caption micro-batch wait, seconds."),
    "--redis-prefix": ("redis_prefix", str, "Prefix of every Redis key."),
    "--brands-file": ("brands_file", str, "Tracked brands (JSON or YAML; see `affectstream brands check`)."),
    "--web-port": ("web_port", int, "Worker web server port."),
    "--web-bind": ("web_bind", str, "Interface the web server listens on (default 127.0.0.1; any other needs "
                                    "AFFECTSTREAM_WEB_AUTH_TOKEN)."),
}
EXPLICIT = "affectstream.explicit_settings"  # click context meta: names set by a flag, --set or the environment
FLAGGED = "affectstream.flagged_settings"    # click context meta: names set by a flag or --set


def settings_options(func: Callable) -> Callable:
    """Add the setting flags, ``--with-web/--without-web`` and ``--set NAME=VALUE`` to a command; the
    command receives ``settings: Settings`` instead of them."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        overrides: dict[str, Any] = {}
        for flag, (name, _, _) in SETTING_FLAGS.items():
            value = kwargs.pop(_param_name(flag))
            if value is not None:
                overrides[name] = value
        web = kwargs.pop("web")
        if web is not None:
            overrides["web_enabled"] = web
        for item in kwargs.pop("set_values"):
            overrides.update(parse_set(item))
        env_names = {name for name in SETTING_FIELDS if env_name(name) in os.environ}
        click.get_current_context().meta[EXPLICIT] = frozenset(overrides) | env_names
        click.get_current_context().meta[FLAGGED] = frozenset(overrides)
        try:
            kwargs["settings"] = Settings.load(overrides)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
        return func(*args, **kwargs)

    wrapper = click.option("--set", "set_values", multiple=True, metavar="NAME=VALUE",
                           help="Any other setting, e.g. --set caption_timeout_s=10.")(wrapper)
    wrapper = click.option("--with-web/--without-web", "web", default=None,
                           help="Start the web server (dashboard, API, /metrics). worker: on for --role monitor, "
                                "else off unless asked; demo: on for its first worker.")(wrapper)
    for flag, (_, kind, help_) in reversed(SETTING_FLAGS.items()):
        wrapper = click.option(flag, _param_name(flag), type=kind, default=None, help=help_)(wrapper)
    return wrapper


def explicitly_set(name: str) -> bool:
    """Whether the running command's setting ``name`` came from a flag, ``--set`` or the environment."""
    return name in click.get_current_context().meta.get(EXPLICIT, frozenset())


def _param_name(flag: str) -> str:
    return "opt_" + flag.lstrip("-").replace("-", "_")


def parse_set(item: str) -> dict[str, Any]:
    """``name=value`` -> {name: typed value}, typed like the environment variable would be."""
    name, sep, raw = item.partition("=")
    name = name.strip().lower().replace("-", "_")
    if name.upper().startswith(ENV_PREFIX):
        name = name[len(ENV_PREFIX):]
    if not sep or name not in SETTING_FIELDS:
        raise click.BadParameter(f"--set {item!r}: expected NAME=VALUE with NAME one of {sorted(SETTING_FIELDS)}")
    try:
        return {name: _coerce(SETTING_FIELDS[name], raw)}
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """affectstream: streaming multimodal sentiment with rationales."""


@main.command()
@click.option("--role", type=click.Choice(["caption", "classify", "all", "monitor"]), default="all", show_default=True,
              help="Which agents this worker runs; scale each role by starting more workers. "
                   "monitor: dashboard, /metrics and alerts only, in its own consumer group. Only the monitor "
                   "opens the web port unless --with-web (or AFFECTSTREAM_WEB_ENABLED=true) asks for it.")
@click.option("--loglevel", default="info", show_default=True)
@click.option("--create-topics/--no-create-topics", default=True, show_default=True,
              help="Create missing topics with settings.kafka.partitions before starting.")
@settings_options
def worker(settings: Settings, role: str, loglevel: str, create_topics: bool) -> None:
    """Run a faust worker for ROLE until SIGINT/SIGTERM."""
    import faust

    from affectstream.streaming.monitor.web import monitor_settings, register_web
    from affectstream.streaming.worker.app import WebExposureError, create_app
    from affectstream.streaming.worker.sinks import SinkConfigError

    if not settings.kafka.brokers or not settings.redis.url:
        raise click.UsageError("worker needs --broker and --redis (the embedded services are for `demo`)")
    if create_topics:
        from affectstream.streaming.worker.kafka_config import create_topics as create

        create(settings)
    if role == "monitor":  # its own group: starting or stopping it never rebalances the processing workers
        settings = monitor_settings(settings)
    else:  # a processing worker serves no dashboard: it opens the web port only when asked to
        settings = settings.replace(web_enabled=settings.web.enabled and explicitly_set("web_enabled"))
    try:
        app = create_app(settings, role)
    except (SinkConfigError, WebExposureError) as e:
        raise click.UsageError(str(e)) from None
    if settings.web.enabled:
        register_web(app, settings)  # dashboard, JSON API, SSE, /metrics, sentiment-shift alerts, corrections
    if role == "monitor":  # analysts' corrections: feedback topic -> Redis (or the DLQ with a reason)
        from affectstream.streaming.monitor.intake import register_intake

        register_intake(app, settings)
    web = f"http://{settings.web.bind}:{settings.web.port}/" if settings.web.enabled else "off"
    auth = " (token required)" if settings.web.enabled and settings.web.auth_token else ""
    click.echo(f"affectstream worker role={role} app={settings.kafka.app_id} broker={settings.redacted()['broker_url']} "
               f"web={web}{auth}", err=True)
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True), default=str(SAMPLE))
@click.option("--topic", default=None, help="Target topic (default: settings.kafka.topic_posts).")
@click.option("--rate", type=float, default=0.0, help="Posts per second (0: as fast as possible).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@settings_options
def produce(settings: Settings, file: str, topic: str | None, rate: float, progress: bool) -> None:
    """Send FILE.jsonl (one post per line; '-' reads stdin) to the posts topic.

    The key is the post id when one can be read; lines that are not valid posts are sent as they are,
    so they reach the dead-letter topic with a reason."""
    from affectstream.streaming.tools.producer import produce_file

    stats = produce_file(settings, file, topic=topic, rate=rate, progress=progress)
    click.echo(f"sent {stats.sent} messages to {stats.topic} ({stats.without_key} without a readable id) "
               f"in {stats.seconds:.2f}s", err=True)


@main.command()
@click.option("--from-beginning", is_flag=True, help="Start at the oldest retained result.")
@click.option("--json", "as_json", is_flag=True, help="Print each result as one JSON line.")
@click.option("--limit", type=int, default=0, help="Stop after this many results (0: never).")
@click.option("--dlq", is_flag=True, help="Tail the dead-letter topic instead.")
@settings_options
def tail(settings: Settings, from_beginning: bool, as_json: bool, limit: int, dlq: bool) -> None:
    """Print results from the sentiment topic as they arrive."""
    from affectstream.streaming.tools.tail import tail as run_tail

    run_tail(settings, from_beginning=from_beginning, as_json=as_json, limit=limit, dlq=dlq)


@main.command()
@click.option("--sample", type=click.Path(exists=True, dir_okay=False), default=str(SAMPLE), show_default=False,
              help="Posts to stream (default: the bundled sample).")
@click.option("--live/--no-live", default=True, help="Live terminal view, or plain progress lines for logs.")
@click.option("--rate", type=float, default=0.0, help="Posts per second (0: as fast as possible).")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="Give up after this many seconds.")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes (role all).")
@click.option("--embedded/--external", default=True, show_default=True,
              help="Start an embedded broker and Redis (default), or use --broker/--redis.")
@click.option("--hold", is_flag=True, help="Keep the workers and the dashboard up after the stream, until Ctrl-C.")
@settings_options
def demo(settings: Settings, sample: str, live: bool, rate: float, timeout_s: float, workers: int,
         embedded: bool, hold: bool) -> None:
    """Embedded broker + Redis, a model, a worker, the bundled sample, and a live per-brand view.

    The demo runs the packaged models: the Hugging Face Hub is off unless HF_HUB_OFFLINE is set
    (HF_HUB_OFFLINE=0 for a demo with a Hub model, e.g. --captioner vlm:<id>)."""
    from affectstream.model.hub import packaged_models_only
    from affectstream.streaming.tools.demo import run_demo

    packaged_models_only()

    if embedded:
        settings = settings.replace(broker_url="", redis_url="")
    from affectstream.streaming.monitor.drivers import summary_drivers

    summary = run_demo(settings, sample=Path(sample), live=live, rate=rate, timeout_s=timeout_s, workers=workers,
                       hold=hold, drivers_of=summary_drivers)
    sys.exit(0 if summary.complete else 1)


@main.command()
@settings_options
def topics(settings: Settings) -> None:
    """Create every topic with settings.kafka.partitions partitions (idempotent)."""
    from affectstream.streaming.worker.kafka_config import create_topics

    create_topics(settings, timeout_s=120)  # a broker in a fresh cluster can take a while
    click.echo(f"topics ready on {settings.redacted()['broker_url']}")


@main.command("settings")
@click.option("--json", "as_json", is_flag=True, help="A JSON list: name, variable, value, source per setting.")
@click.option("--markdown", is_flag=True, help="The generated reference of docs/settings.md (defaults) instead.")
@settings_options
def settings_command(settings: Settings, as_json: bool, markdown: bool) -> None:
    """Every setting's effective value and its source (flag, env, default); secrets masked."""
    from affectstream.streaming.tools import settings_report as report

    if markdown:
        click.echo(report.reference_markdown(), nl=False)
        return
    table = report.rows(settings, click.get_current_context().meta.get(FLAGGED, frozenset()), os.environ)
    click.echo(report.render_json(table) if as_json else report.render_text(table))


@main.group()
def brands() -> None:
    """Tracked brands: the brands file that mention detection reads."""


@brands.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def brands_check(file: str) -> None:
    """Validate a brands file: exit 0 with a summary, or exit 2 with every error listed."""
    from affectstream.streaming.worker.brands import BrandsFileError, load_catalog

    try:
        catalog = load_catalog(file)
    except BrandsFileError as e:
        click.echo(f"{file}: {len(e.errors)} error(s)", err=True)
        for error in e.errors:
            click.echo(f"  {error}", err=True)
        sys.exit(2)
    click.echo(f"{file}: ok, {catalog.summary()}")


def _add_commands() -> None:
    # train / evaluate / ablate live with the trainer, bench with the benchmarks; the CLI only wires them in
    from affectstream.bench.cli import bench
    from affectstream.bench.reliability import reliability
    from affectstream.predict import predict
    from affectstream.training.cli import COMMANDS

    for command in (*COMMANDS, bench, reliability, predict):
        main.add_command(command)
    # corrections and model versions: feedback FILE, retrain, model list|promote|rollback|shadow|canary|off|history
    from affectstream.streaming.tools.feedback_cli import commands as feedback_commands

    for command in feedback_commands(settings_options):
        main.add_command(command)


_add_commands()

if __name__ == "__main__":
    main()
