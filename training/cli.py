"""`affectstream train | evaluate | ablate | calibrate`: wire flags to TrainConfig and the training functions."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from affectstream.training.config import PRESETS, TrainConfig

OPTIONS = [  # (flag, TrainConfig field, type)
    ("--dataset", "dataset", str), ("--data-path", "data_path", str), ("--split-file", "split_file", str),
    ("--encoder", "encoder", str), ("--captioner", "captioner", str), ("--top-k", "top_k", int),
    ("--pooling", "pooling", click.Choice(["topk", "all", "hybrid"])), ("--lambda", "uniformity_weight", float),
    ("--top-k-ratio", "top_k_ratio", float), ("--top-k-min", "top_k_min", int),
    ("--min-weight-share", "min_weight_share", float),
    ("--token-selection", "token_selection", click.Choice(["all", "content"])),
    ("--serve-selection", "serve_selection", click.Choice(["all", "content"])),
    ("--max-length", "max_length", int), ("--max-extra-train", "max_extra_train", int), ("--epochs", "epochs", int), ("--batch-size", "batch_size", int),
    ("--lr", "lr", float), ("--head-lr", "head_lr", float), ("--seed", "seed", int), ("--out", "out_dir", str),
    ("--run-dir", "run_dir", str), ("--max-train-samples", "max_train_samples", int),
    ("--proxy-size", "proxy_size", int), ("--threads", "threads", int), ("--version", "version", str),
    ("--device", "device", click.Choice(["auto", "cpu", "cuda"])),
    ("--scorer-warmup", "scorer_warmup", float), ("--lambda-ramp", "uniformity_ramp", float), ("--weight-ema", "weight_ema", float),
    ("--init-from", "init_from", str), ("--distill-from", "distill_from", str), ("--distill-weight", "distill_weight", float),
    ("--distill-temperature", "distill_temperature", float), ("--class-bias", "class_bias", bool),
]


def train_options(fn):
    fn = click.option("--preset", type=click.Choice(sorted(PRESETS)), default="default", show_default=True)(fn)
    fn = click.option("--extra", "extra_datasets", multiple=True, help="Also train on this dataset kind (repeatable).")(fn)
    fn = click.option("--no-resume", is_flag=True, help="Ignore an existing checkpoint in --run-dir.")(fn)
    fn = click.option("--uncapped", "uncapped_extras", default=None,
                      help="Extra datasets drawn whole past --max-extra-train, comma-separated ('' for none).")(fn)
    for flag, name, kind in OPTIONS:
        fn = click.option(flag, name, type=kind, default=None, help=f"Overrides TrainConfig.{name}.")(fn)
    return fn


def config_from(preset: str, extra_datasets: tuple[str, ...], no_resume: bool, uncapped_extras: str | None = None,
                **flags) -> TrainConfig:
    changes = {k: v for k, v in flags.items() if v is not None}
    if uncapped_extras is not None:
        changes["uncapped_extras"] = tuple(n.strip() for n in uncapped_extras.split(",") if n.strip())
    if extra_datasets:
        changes["extra_datasets"] = tuple(extra_datasets)
    if no_resume:
        changes["resume"] = False
    return PRESETS[preset].replace(**changes)


@click.command()
@train_options
@click.option("--ablations", is_flag=True, help="Also train the ablations and add their table to the card.")
@click.option("--seeds", default=None, help="Comma-separated seeds: train each, ship the first, put mean ± sd in the card.")
def train(ablations: bool, seeds: str | None, **flags) -> None:
    """Train and export a deployed model directory (default: the offline default model)."""
    from affectstream.training.train import train as run_train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from(**flags)
    if seeds:
        from affectstream.training.seeds import render, train_seeds

        summary = train_seeds(cfg, [int(seed) for seed in seeds.split(",") if seed.strip()])
        click.echo(render(summary))
        click.echo(f"exported {cfg.out_dir}  (card: {Path(cfg.out_dir) / 'card.md'})")
        return
    result = run_train(cfg)
    print_summary(result.metrics)
    if ablations:
        from affectstream.training.ablations import DEFAULT_VARIANTS, attach_to_model, run_study, save_study

        study = run_study(cfg, list(DEFAULT_VARIANTS), [cfg.seed], Path(cfg.run_dir) / "ablations", log=click.echo)
        save_study(study, Path(cfg.run_dir) / "ablations" / "study.json")
        click.echo("\nAblations\n" + attach_to_model(result.out_dir, study))
    click.echo(f"exported {result.out_dir}  (card: {result.out_dir / 'card.md'})")


@click.command()
@train_options
@click.option("--seeds", "seeds_spec", default="1", show_default=True,
              help="N (N seeds from the preset's) or a comma-separated list, e.g. 13,14,15 (one seed: 13,).")
@click.option("--variant", "variants", multiple=True, help="Run only these variants (repeatable; see --list).")
@click.option("--list", "list_variants", is_flag=True, help="List the variants and their changes, then exit.")
@click.option("--json", "json_path", default=None, help="Where to save the study [default: <run-dir>/ablations/study.json].")
@click.option("--attach", "attach_dir", default=None, type=click.Path(file_okay=False),
              help="Also write the tables into this model directory's card.md and metrics.json.")
@click.option("--no-train", is_flag=True, help="Only read back finished runs; leave out the others.")
@click.option("--held-out", "held_out", multiple=True, metavar="KIND=PATH",
              help="Also score every run on this data set's test split, which no run trains or tunes on "
                   "(repeatable), e.g. twitter2015=data/twitter2015.")
def ablate(seeds_spec: str, variants: tuple[str, ...], list_variants: bool, json_path: str | None,
           attach_dir: str | None, no_train: bool, held_out: tuple[str, ...], **flags) -> None:
    """Every variant × seed on the same splits: mean ± sd per variant, paired differences against the full
    method. Runs already done with the same configuration are read back, not retrained."""
    from affectstream.training.ablations import (DEFAULT_VARIANTS, VARIANTS, attach_to_model, parse_seeds, render,
                                                 run_study, save_study)

    if list_variants:
        for name, changes in VARIANTS.items():
            click.echo(f"{name}: {changes}")
        return
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise click.BadParameter(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}", param_hint="--variant")
    logging.basicConfig(level=logging.WARNING)
    cfg = config_from(**flags)
    root = Path(cfg.run_dir) / "ablations"
    from affectstream.training.held_out import parse_held_out

    study = run_study(cfg, list(variants or DEFAULT_VARIANTS), parse_seeds(seeds_spec, cfg.seed), root, log=click.echo,
                      train_missing=not no_train, held_out=parse_held_out(held_out))
    saved = save_study(study, json_path or root / "study.json")
    click.echo(render(study))
    if attach_dir:
        attach_to_model(attach_dir, study)
    click.echo(f"saved {saved}")


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", default="vader", show_default=True)
@click.option("--data-path", default=None)
@click.option("--split", default="test", type=click.Choice(["train", "dev", "test"]), show_default=True)
@click.option("--seed", default=None, type=int,
              help="Split seed [default: the seed the model was trained with, from its metrics.json; else 13].")
@click.option("--faithfulness", "with_faithfulness", is_flag=True,
              help="Also measure rationale length and ERASER comprehensiveness/sufficiency against random-K and attention.")
@click.option("--draws", default=5, show_default=True, help="Random-K draws per post (with --faithfulness).")
@click.option("--attach", is_flag=True, help="Write the rationale (or comparative) section into MODEL_DIR's card.md and metrics.json.")
@click.option("--comparative", "comparative_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Only score the per-brand labels of these posts (JSON lines: text, targets {brand: label}).")
def evaluate(model_dir: str, dataset: str, data_path: str | None, split: str, seed: int | None,
             with_faithfulness: bool, draws: int, attach: bool, comparative_file: str | None) -> None:
    """Score a deployed model directory on a dataset split (and, with --faithfulness, its rationales)."""
    if comparative_file:
        evaluate_comparative(model_dir, comparative_file, attach)
        return
    from affectstream.model.captioners import build_captioner
    from affectstream.model.deploy import load_deployed
    from affectstream.model.device import pick_device
    from affectstream.training.datasets import load_dataset
    from affectstream.training.descriptions import describe_samples
    from affectstream.training.evaluate import format_report
    from affectstream.training.train import evaluate_split

    model, tokenizer, model_cfg = load_deployed(model_dir)
    # the seed also draws the stratified split: another seed's test split holds this model's training posts
    trained_seed = training_seed(model_dir)
    if seed is None:
        seed = trained_seed if trained_seed is not None else 13
    elif trained_seed is not None and seed != trained_seed:
        click.echo(f"warning: {model_dir} was trained on the seed-{trained_seed} split; the seed-{seed} {split} "
                   "split shares posts with its training split, so these scores are inflated", err=True)
    data = load_dataset(dataset, data_path, seed=seed)
    samples = data.split(split)
    cfg = TrainConfig(max_length=model_cfg.max_length)
    descriptions, _ = describe_samples([s for s in samples if s.has_image], build_captioner(model_cfg.captioner), cfg.cache_dir)
    metrics = evaluate_split(model, tokenizer, samples, descriptions, cfg, pick_device("cpu"))
    click.echo(format_report(metrics, title=f"{Path(model_dir).name} on {data.name} {split}"))
    if metrics.get("contrast", {}).get("multi_target"):
        c = metrics["contrast"]
        click.echo(f"multi-target posts: {c['multi_target']}; whose gold labels differ: {c['contrast']}; of those, "
                   f"told apart {c['contrast_share']:.3f}, every target right {c['both_right']:.3f}")
    readable, post_level = served_rationale_readability(model_dir, samples, descriptions)
    click.echo(f"rationales (as served): {readable['words_per_post']:.1f} words per post, "
               f"{readable['stopword_share']:.1%} stopwords or punctuation, content word first in "
               f"{readable['content_first']:.1%} of posts")
    if post_level:
        click.echo(f"the same model's post label for every target (as served): accuracy {post_level['accuracy']:.4f}, "
                   f"macro-F1 {post_level['macro_f1']:.4f} (target labels: {metrics['macro_f1']:.4f})")
    if with_faithfulness:
        from affectstream.training.card import attach_section, faithfulness_body
        from affectstream.training.faithfulness import faithfulness, render

        report = faithfulness(model.float(), tokenizer, [(s.text, descriptions.get(s.id, "")) for s in samples], draws=draws)
        report["data"] = f"{data.name} {split}"
        click.echo("Rationales\n" + render(report))
        if attach:
            attach_section(model_dir, "Rationales: length and faithfulness", faithfulness_body(report, f"{data.name} {split}"),
                           "faithfulness", report)
            click.echo(f"attached to {Path(model_dir) / 'card.md'}")


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--token-selection", type=click.Choice(["all", "content"]), default=None,
              help="Serve choosing among these tokens from now on; set before the fit [default: unchanged].")
def calibrate(model_dir: str, device: str, token_selection: str | None) -> None:
    """Fit the per-class logit bias of a trained MODEL_DIR on its dev split (no retraining): rewrites its
    config.json (`sentiment_bias`, and `target_bias` for a model that reads targets; weights unchanged),
    metrics.json's test scores and card.md."""
    from affectstream.training.calibrate_dir import calibrate_directory, describe_record

    logging.basicConfig(level=logging.WARNING)
    record = calibrate_directory(model_dir, device, token_selection)
    click.echo(f"{model_dir}: {describe_record(record)}")


def evaluate_comparative(model_dir: str, path: str, attach: bool) -> None:
    from affectstream.model.predictor import BatchPredictor
    from affectstream.training.comparative import load_posts, render, score

    report = score(BatchPredictor.from_directory(model_dir, device="cpu"), load_posts(path))
    click.echo(render(report))
    if attach:
        from affectstream.training.card import attach_section

        attach_section(model_dir, "Comparative brand posts", f"Posts from `{Path(path).name}`, written before training.\n\n"
                       + render(report), "comparative", {"n": report["n"], "right": report["right"], "file": Path(path).name})
        click.echo(f"attached to {Path(model_dir) / 'card.md'}")


def served_rationale_readability(model_dir: str, samples: list, descriptions: dict[str, str]) -> tuple[dict, dict | None]:
    """training.readability over the rationales the serving predictor shows: per target for (post, target)
    samples, per post otherwise; and, where there are targets, the same predictor's post-level label scored
    against each target's gold label (does reading the target beat the post's own label?)."""
    from affectstream.model.config import SENTIMENT_LABELS
    from affectstream.model.predictor import BatchPredictor
    from affectstream.model.targets import TargetInput
    from affectstream.training.evaluate import classification_metrics
    from affectstream.training.readability import rationale_readability

    predictor = BatchPredictor.from_directory(model_dir, device="cpu")
    targets = [s for s in samples if s.target is not None]
    posts = [s for s in samples if s.target is None]
    predictions = predictor.predict_targets(
        [TargetInput(s.text, descriptions.get(s.id, ""), s.target, tuple(s.target_spans)) for s in targets])
    predictions += predictor.predict([(s.text, descriptions.get(s.id, "")) for s in posts])
    post_level = None
    if targets:
        as_posts = predictor.predict([(s.text, descriptions.get(s.id, "")) for s in targets])
        post_level = classification_metrics([s.label for s in targets], [p.label for p in as_posts], SENTIMENT_LABELS)
    return rationale_readability([[w.text for w in p.rationale] for p in predictions]), post_level


def training_seed(model_dir: str | Path) -> int | None:
    path = Path(model_dir) / "metrics.json"
    try:
        return int(json.loads(path.read_text())["reproducibility"]["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def print_summary(metrics: dict) -> None:
    for name, m in metrics["test"].items():
        click.echo(f"{name} test: accuracy {m['accuracy']:.4f}  weighted-F1 {m['weighted_f1']:.4f}  macro-F1 {m['macro_f1']:.4f}")
    for name, b in metrics["baselines"].items():
        for baseline, m in b.items():
            click.echo(f"{name} test, {baseline}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")
    click.echo(f"trained in {metrics['train_seconds']:.0f} s")


COMMANDS = [train, ablate, evaluate, calibrate]
