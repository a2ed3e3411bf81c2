"""``affectstream predict TEXT [--image FILE_OR_URL] [--brand X …] [--model-dir D] [--json]``: one post through a
deployed model, printed (label, scores, rationale, caption, per-brand targets). The Python form is
``affectstream.Analyzer``; this command only wires flags to it."""
from __future__ import annotations

import click
import orjson


@click.command()
@click.argument("text")
@click.option("--image", default=None, metavar="FILE_OR_URL",
              help="An image file or an http(s) URL (public addresses only), described by the model's captioner.")
@click.option("--brand", "brands", multiple=True, metavar="NAME",
              help="A brand to get the sentiment toward (repeatable): a name, @handle, #hashtag or $cashtag.")
@click.option("--model-dir", default="models/default", show_default=True, type=click.Path(file_okay=False),
              help="A deployed model directory.")
@click.option("--captioner", default=None, help="Override the model's own captioner (offline, none, vlm:<id>).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as one JSON object.")
def predict(text: str, image: str | None, brands: tuple[str, ...], model_dir: str, captioner: str | None,
            device: str, as_json: bool) -> None:
    """Classify one post: label, scores, rationale words, and the sentiment toward each --brand."""
    from pathlib import Path

    from affectstream.analyzer import Analyzer, ImageUnavailable

    if not (Path(model_dir) / "config.json").is_file():
        raise click.BadParameter(f"{model_dir} is not a deployed model directory (no config.json)", param_hint="--model-dir")
    analyzer = Analyzer.from_pretrained(model_dir, captioner=captioner, device=device)
    try:
        analysis = analyzer(text, image=image, brands=list(brands))
    except ImageUnavailable as e:
        raise click.ClickException(f"image not used: {e}") from None
    if as_json:
        click.echo(orjson.dumps(analysis.to_dict()).decode())
        return
    click.echo(render(analysis))


def _scores(scores: dict[str, float]) -> str:
    return "  ".join(f"{label} {p:.2f}" for label, p in scores.items())


def _words(rationale) -> str:
    return ", ".join(f"{w.text} ({w.score:.2f}{', image' if w.source == 'image' else ''})" for w in rationale) or "-"


def render(analysis) -> str:
    lines = [f"label      {analysis.label}", f"scores     {_scores(analysis.scores)}",
             f"rationale  {_words(analysis.rationale)}"]
    if analysis.emotion:
        lines.append(f"emotion    {analysis.emotion['label']}  ({_scores(analysis.emotion['scores'])})")
    if analysis.caption is not None:
        lines.append(f"caption    {analysis.caption or '(empty)'}")
    if analysis.targets:
        note = "" if analysis.targets_per_brand else "  (post-level model: every brand gets the post's label)"
        lines.append(f"targets{note}")
        for t in analysis.targets:
            where = ", ".join(f"{m['source']} [{m['span'][0]}:{m['span'][1]}]" for m in t.mentions) or "not mentioned"
            lines.append(f"  {t.name:<12} {t.label:<9} {_scores(t.scores)}  [{where}]")
            if analysis.targets_per_brand:
                lines.append(f"  {'':<12} rationale {_words(t.rationale)}")
    lines.append(f"model      {analysis.model}")
    return "\n".join(lines)
