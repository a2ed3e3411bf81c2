"""The Markdown model card written next to deployed weights (``models/<version>/card.md``).

``render_card`` takes plain dicts so the trainer can build them from what it already has:

- ``config``: ``AlignedConfig.to_dict()`` (plus any training options, e.g. ``epochs``, ``lr``);
- ``metrics``: ``classification_metrics`` on the test split, or ``{"sentiment": m, "emotion": m}`` when the
  model has an emotion head;
- ``dataset``: ``dataset_info(ds)``;
- ``baseline``: ``classification_metrics`` of a reference predictor on the same test split (a ``"name"``
  key names it; default: VADER's rule analyzer);
- ``ablations``: table rows, one dict per run;
- ``plots``: image filenames, relative to the card;
- ``reproducibility``: ``{"seed", "data_fingerprint", "git_commit", ...}``.
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from affectstream.model.targets import mark_target
from affectstream.training.datasets import KINDS
from affectstream.training.evaluate import format_report, format_table
from affectstream.training.samples import SPLITS, Dataset

DEFAULT_BASELINE_NAME = "VADER rule analyzer (compound ±0.05)"
RESULT_ROWS = (("accuracy", "Accuracy"), ("weighted_f1", "Weighted F1"), ("macro_precision", "Macro precision"),
               ("macro_recall", "Macro recall"), ("macro_f1", "Macro F1"))


def dataset_info(ds: Dataset) -> dict[str, Any]:
    """What the card (and metrics.json) says about the training data."""
    spec = KINDS.get(ds.kind)  # None for a Dataset built by hand rather than by load_dataset
    return {"name": ds.name, "kind": ds.kind, "counts": ds.counts(), "fingerprint": ds.fingerprint(),
            "source": ds.source, "citation": ds.citation, "skipped": dict(ds.skipped), "notes": dict(ds.notes),
            "emotion_counts": ds.emotion_counts() if ds.has_emotion else {},
            "synthetic": bool(spec and spec.synthetic), "card_notes": list(spec.card_notes if spec else ())}


def _heads(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """head name → metrics, whether one head's metrics or a dict of heads was given."""
    if "per_class" in metrics:
        return {"sentiment": metrics}
    return {head: m for head, m in metrics.items() if isinstance(m, dict) and "per_class" in m}


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "–"


def _counts_table(dataset: dict[str, Any]) -> str:
    counts: dict[str, dict[str, int]] = dataset.get("counts") or {}
    if not counts:
        return "_(counts not given)_\n"
    labels: list[str] = []
    for split_counts in counts.values():
        labels += [lab for lab in split_counts if lab not in labels]
    splits = [sp for sp in SPLITS if sp in counts] + [sp for sp in counts if sp not in SPLITS]
    lines = ["| split | " + " | ".join(labels) + " | total |", "|---|" + "---:|" * (len(labels) + 1)]
    totals = dict.fromkeys(labels, 0)
    for sp in splits:
        row = [counts[sp].get(lab, 0) for lab in labels]
        for lab, v in zip(labels, row):
            totals[lab] += v
        lines.append(f"| {sp} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    lines.append("| **all** | " + " | ".join(str(totals[lab]) for lab in labels) + f" | {sum(totals.values())} |")
    return "\n".join(lines) + "\n"


def _plot_ref(plot: str) -> str:
    p = Path(plot)
    return p.name if p.is_absolute() else PurePosixPath(*p.parts).as_posix()


def render_card(*, config: dict[str, Any], metrics: dict[str, Any], dataset: dict[str, Any],
                baseline: dict[str, Any] | None, ablations: list[dict[str, Any]] | None, plots: list[str],
                reproducibility: dict[str, Any]) -> str:
    version = config.get("version", "untrained")
    encoder = config.get("encoder", "?")
    captioner = config.get("captioner", "?")
    top_k = config.get("top_k", "?")
    lam = config.get("uniformity_weight", "?")
    max_length = config.get("max_length", "?")
    pooling = config.get("pooling", "topk")
    heads = _heads(metrics)
    out: list[str] = []
    add = out.append

    add(f"# affectstream sentiment model — `{version}`\n")
    add(f"Aligned multimodal sentiment classifier trained on **{dataset.get('name', '?')}**; "
        f"encoder `{encoder}`, captioner `{captioner}`.\n")

    add("## Intended use\n")
    add("- Streaming brand monitoring: label social posts (text, optionally with an image) as "
        + "/".join(f"`{lab}`" for lab in config.get("sentiment_labels", ("negative", "neutral", "positive")))
        + ", with a rationale — the top-K input tokens the model pooled, merged into words and tagged as "
          "coming from the post text or from the image description.")
    add("- Aggregate trends (per-brand counts per minute) read by people, where single errors average out.\n")
    add("### Out of scope\n")
    add("- Decisions about individual people (moderation, hiring, credit, law enforcement) made on a label alone.")
    add("- Languages other than English; long documents; domains far from social posts (reviews, news, "
        "clinical text) without re-training and re-evaluation.")
    add("- Reading the rationale as a causal explanation: it shows which tokens were pooled, not why the "
        "label is right.\n")

    add("## Method\n")
    add(f"1. An image is turned into language by the captioner (`{captioner}`); a text-only post has no description.")
    add("2. The encoder reads one pair: `text </s></s> description` (`[SEP]` for BERT-style encoders), "
        f"at most {max_length} tokens.")
    if config.get("target_format"):
        example = mark_target("love acme", "Acme", [(5, 9)], config["target_format"])
        absent = mark_target("", "Acme", [], config["target_format"])
        add(f"   Target-level (`{config['target_format']}`): the label is the sentiment toward one target, which "
            f"the text side carries marked (`{example}`, or `{absent}` first when the text does not name it; "
            "`model.targets.mark_target`); marker tokens are never selected.")
    ratio, share = config.get("top_k_ratio", 0.0) or 0.0, config.get("min_weight_share", 0.0) or 0.0
    k_rule = (f"K = ceil({ratio}·n) for a post of n tokens, between {config.get('top_k_min', 1)} and {top_k}"
              if ratio else f"K = {top_k}")
    add(f"3. A small MLP token scorer gives every token a score; the top-K tokens are kept ({k_rule}"
        + (f"; of those, only tokens whose pooling weight is at least {share} × the top token's" if share else "")
        + "). The kept tokens are the rationale, merged into words.")
    if pooling == "hybrid":
        add("4. The kept tokens' hidden states are averaged with softmax-normalised score weights; the heads "
            "classify the mean of that vector and the plain mean of every real token (`hybrid` pooling).")
    elif pooling == "all":
        add("4. Ablation: the heads classify the plain mean of every real token; the scorer is not used.")
    else:
        add("4. The kept tokens' hidden states are averaged with softmax-normalised score weights; linear heads "
            "classify the pooled vector.")
    add(f"5. Loss: cross-entropy + λ·uniformity, the mean off-diagonal cosine similarity of a batch's pooled "
        f"vectors, which pushes them apart (λ = {lam}).")
    bias = config.get("sentiment_bias") or ()
    if any(bias):
        labels = config.get("sentiment_labels", ("negative", "neutral", "positive"))
        add("6. A per-class bias is added to the sentiment logits (" + ", ".join(
            f"{lab} {b:+.2f}" for lab, b in zip(labels, bias)) + "), fitted after training on the dev split to "
            "maximise macro-F1 (`training/calibrate.py`); it moves the decision boundary toward the minority class.")
    add("")

    add("| setting | value |\n|---|---|")
    for key, label in (("encoder", "encoder"), ("captioner", "captioner"), ("top_k", "K (at most)"),
                       ("top_k_ratio", "K per post, ρ"), ("top_k_min", "K at least"),
                       ("min_weight_share", "rationale weight share"), ("text_normalization", "text normalisation"), ("token_selection", "token selection"),
                       ("uniformity_weight", "λ"), ("sentiment_bias", "sentiment logit bias"),
                       ("max_length", "max length"), ("pooling", "pooling"),
                       ("sentiment_labels", "sentiment labels"), ("emotion_labels", "emotion labels"),
                       ("target_format", "target format")):
        if key in config and config[key] not in ("", (), [], 0.0) and not (key == "top_k_min" and not config.get("top_k_ratio")):
            value = config[key]
            shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            add(f"| {label} | `{shown}` |")
    add("")

    add("## Training data\n")
    add(f"- Name: **{dataset.get('name', '?')}**")
    if dataset.get("source"):
        add(f"- Source: {dataset['source']}")
    if dataset.get("fingerprint"):
        add(f"- Fingerprint (sha256 of id/label/split): `{dataset['fingerprint']}`")
    for key, label in (("skipped", "Records dropped"), ("notes", "Kept with a caveat")):
        if dataset.get(key):
            add(f"- {label}: " + ", ".join(f"{k} = {v}" for k, v in sorted(dataset[key].items())))
    if dataset.get("citation"):
        add(f"- Citation: {dataset['citation']}")
    for note in dataset.get("card_notes", ()):
        add(f"- {note}")
    if dataset.get("synthetic"):
        add("- **This multimodal proxy set is synthetic**: generated images whose sentiment the text alone does "
            "not carry. It checks that the image path works end to end; its scores say nothing about real posts.")
    add("")
    add(_counts_table(dataset))
    if dataset.get("emotion_counts"):
        add("Emotion counts: " + ", ".join(f"{k} = {v}" for k, v in dataset["emotion_counts"].items()) + "\n")

    add("## Results (test split)\n")
    sentiment = heads.get("sentiment") or next(iter(heads.values()), {})
    baseline_name = (baseline or {}).get("name", DEFAULT_BASELINE_NAME)
    header = "| metric (%) | this model |" + (f" {baseline_name} |" if baseline else "")
    add(header)
    add("|---|---:|" + ("---:|" if baseline else ""))
    for key, label in RESULT_ROWS:
        add(f"| {label} | {_pct(sentiment.get(key))} |" + (f" {_pct(baseline.get(key))} |" if baseline else ""))
    add(f"| n | {sentiment.get('n', '–')} |" + (f" {baseline.get('n', '–')} |" if baseline else ""))
    add("")
    add("Weighted F1 weights each class's F1 by its support (the MVSA convention); macro scores are the "
        "unweighted mean over classes (the MSED convention).")
    if baseline:
        add(f"The baseline is {baseline_name}, run on the post text of the same test split.")
    add("")
    for head, m in heads.items():
        add(f"### Per-class report: {head}\n")
        add("```text\n" + format_report(m).rstrip("\n") + "\n```\n")
        if head != "sentiment" or len(heads) > 1:
            add(f"{head}: accuracy {_pct(m.get('accuracy'))}, macro F1 {_pct(m.get('macro_f1'))}, "
                f"weighted F1 {_pct(m.get('weighted_f1'))}.\n")

    if ablations:
        add("## Ablations\n")
        columns: list[str] = []
        for row in ablations:
            columns += [c for c in row if c not in columns]
        add("```text\n" + format_table(ablations, columns).rstrip("\n") + "\n```\n")

    if plots:
        add("## Plots\n")
        for plot in plots:
            ref = _plot_ref(plot)
            add(f"![{PurePosixPath(ref).stem}]({ref})\n")

    add("## Limitations\n")
    add("- English only: the encoder, the captioner's vocabulary and the training data are English.")
    if "minilm" in str(encoder).lower():
        add(f"- The offline default encoder (`{encoder}`) is small (MiniLM, 6 layers); the production setup "
            "uses `roberta-base` and a real vision-language captioner.")
    else:
        add("- The offline default encoder is a small MiniLM; scores from it are lower than the production setup's.")
    add("- Published targets for the production setup — MVSA-Single accuracy 82.3 / F1 81.8, MSED sentiment F1 "
        "89.46, emotion F1 87.09 — are the paper's, with `roberta-base` and a real VLM. They are **not reproduced "
        "here**: those datasets and models are not reachable offline. Compare this card's numbers only with "
        "runs on the same data.")
    add("- Sarcasm, irony and sentiment that needs world knowledge remain hard; the rationale can point at "
        "plausible-looking tokens on a wrong label.")
    add("- Label distributions shift over time and across brands; monitor and re-evaluate on fresh posts.\n")

    add("## Reproducibility\n")
    repro = dict(reproducibility)
    for key, label in (("seed", "Seed"), ("data_fingerprint", "Data fingerprint"), ("git_commit", "Git commit")):
        value = repro.pop(key, None)
        if key == "data_fingerprint" and value is None:
            value = dataset.get("fingerprint")
        add(f"- {label}: `{value if value is not None else 'unknown'}`")
    for key, value in repro.items():
        add(f"- {key}: `{value}`")
    add("\nConfig:\n")
    add("```json\n" + json.dumps(config, indent=2, sort_keys=True, default=str) + "\n```")
    return "\n".join(out) + "\n"


def build_card(config: dict[str, Any], metrics: dict[str, Any], datasets: list[Dataset], plots: list[str],
               ablations: list[dict[str, Any]] | None = None) -> str:
    """The whole card of a trained model: `render_card` for the primary data set, a section per extra one."""
    primary = datasets[0]
    baseline = metrics["baselines"].get(primary.name, {}).get("vader_rule")
    card = render_card(config=config, metrics=metrics["test"].get(primary.name, {}), dataset=dataset_info(primary),
                       baseline=baseline, ablations=ablations, plots=plots,
                       reproducibility={**metrics["reproducibility"], "data_fingerprint": primary.fingerprint()})
    for extra in datasets[1:]:
        if extra.name in metrics["test"]:
            card += (f"\n## Also trained on: {extra.name}\n\n{extra.summary()}\n\n```text\n"
                     f"{format_report(metrics['test'][extra.name], title=f'{extra.name} test')}\n```\n")
    return card


def section_body(card: str, title: str) -> str | None:
    """The text under `## title` up to the next `## ` heading (None when the card has no such section)."""
    heading = f"## {title}\n"
    if not card.startswith(heading) and f"\n{heading}" not in card:
        return None
    after = card.split(heading, 1)[1]
    return after[:after.index("\n## ")] if "\n## " in after else after


def replace_section(card: str, title: str, body: str) -> str:
    """`card` with `## title` holding `body`: in place when the section exists, else appended."""
    heading = f"## {title}\n"
    section = f"{heading}\n{body.strip()}\n"
    if f"\n{heading}" in card:
        before, _, after = card.partition(f"\n{heading}")
        rest = after[after.index("\n## ") + 1:] if "\n## " in after else ""
        return before.rstrip("\n") + "\n\n" + section + ("\n" + rest if rest else "")
    return card.rstrip("\n") + "\n\n" + section


REFRESHED = ("Method", "Results (test split)", "Reproducibility")


def refresh_card(model_dir: str | Path, config: dict[str, Any], metrics: dict[str, Any], datasets: list[Dataset]) -> None:
    """After a change that keeps the weights (a fitted class bias): re-render the sections that depend on the
    config and the test scores, in place; sections attached later (ablations, rationales) stay as they were."""
    card_path = Path(model_dir) / "card.md"
    card, fresh = card_path.read_text(), build_card(config, metrics, datasets, plots=[])
    titles = REFRESHED + tuple(f"Also trained on: {d.name}" for d in datasets[1:])
    for title in titles:
        body = section_body(fresh, title)
        if body is not None:
            card = replace_section(card, title, body)
    card_path.write_text(card)


def attach_section(model_dir: str | Path, title: str, body: str, metrics_key: str, value: Any) -> None:
    """Write `## title` with `body` into a model's card.md (replacing an earlier section of that title, in
    place) and `value` under `metrics_key` in its metrics.json."""
    model_dir = Path(model_dir)
    card_path = model_dir / "card.md"
    card_path.write_text(replace_section(card_path.read_text(), title, body))
    metrics_path = model_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics[metrics_key] = value
    metrics_path.write_text(json.dumps(metrics, indent=2, ensure_ascii=False, default=str))


def faithfulness_body(report: dict[str, Any], split: str) -> str:
    """The card's rationale section: what the numbers mean, the table, a few examples."""
    from affectstream.training.faithfulness import render

    lines = [f"Measured on the {split} split with `affectstream evaluate MODEL_DIR --faithfulness` "
             "(`training/faithfulness.py`). ERASER's metrics (DeYoung et al., 2020), for the predicted class ŷ: "
             "**comprehensiveness** = p(ŷ | post) − p(ŷ | post without the rationale words) (higher: the "
             "prediction needed them); **sufficiency** = p(ŷ | post) − p(ŷ | the rationale words alone) (lower: "
             "they carry it). Random-K and attention (last-layer attention from the first token, averaged over "
             "heads) choose the same number of words per post.",
             "", "```text", render(report).rstrip("\n"), "```", "", "Examples (predicted label: rationale words):", ""]
    for ex in report.get("examples", [])[:6]:
        lines.append(f"- `{ex['text'][:120]}` → **{ex['label']}**: " + ", ".join(f"`{w}`" for w in ex["rationale"]))
    return "\n".join(lines)
