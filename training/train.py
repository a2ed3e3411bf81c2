"""The training loop: data → descriptions → forward → CE (+ emotion CE) + λ·uniformity → backward → step
→ dev eval → checkpoint → export. One function, `train`, reads top to bottom.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from affectstream.model.aligned import AlignedClassifier
from affectstream.model.captioners import build_captioner
from affectstream.model.config import EMOTION_LABELS, SENTIMENT_LABELS, AlignedConfig
from affectstream.model.deploy import save_deployed
from affectstream.model.device import autocast, pick_device
from affectstream.model.encoders import load_encoder
from affectstream.model.losses import aligned_objective
from affectstream.model.targets import TARGET_FORMAT
from affectstream.model.tokenization import encoding_options
from affectstream.training.batches import encode_batch, length_bucketed_batches
from affectstream.training.config import TrainConfig
from affectstream.training.datasets import KINDS, load_dataset
from affectstream.training.descriptions import describe_samples
from affectstream.training.mixing import capped
from affectstream.training.samples import Dataset, Sample

log = logging.getLogger("affectstream.train")


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict
    history: list[dict]


# ---------------------------------------------------------------- data

def load_datasets(cfg: TrainConfig) -> list[Dataset]:
    """The primary dataset (from cfg.data_path) and every extra kind (fetched or generated: no path)."""
    def options(kind: str) -> dict:
        return {option: getattr(cfg, name) for option, name in KINDS[kind.strip().lower()].train_options.items()}

    datasets = [load_dataset(cfg.dataset, cfg.data_path, seed=cfg.seed, split_file=cfg.split_file, **options(cfg.dataset))]
    for extra in cfg.extra_datasets:  # "kind" (fetched or generated) or "kind=path"
        kind, _, path = extra.partition("=")
        datasets.append(load_dataset(kind, path or None, seed=cfg.seed, **options(kind)))
    return datasets


def uniformity_at(cfg: TrainConfig, progress_share: float) -> float:
    """λ at this point of training (`progress_share` of the steps done): constant, or ramped up from 0."""
    if cfg.uniformity_ramp <= 0:
        return cfg.uniformity_weight
    return cfg.uniformity_weight * min(1.0, progress_share / cfg.uniformity_ramp)


def init_from_trained(model: AlignedClassifier, directory: str) -> None:
    """Start from a trained model's weights (same encoder and labels): every tensor must match in name and shape."""
    from affectstream.model.deploy import load_deployed

    trained, _, trained_cfg = load_deployed(directory)
    if trained_cfg.encoder != model.config.encoder or trained_cfg.sentiment_labels != model.config.sentiment_labels:
        raise ValueError(f"--init-from {directory}: encoder {trained_cfg.encoder!r} / labels {trained_cfg.sentiment_labels} "
                         f"do not match this run's {model.config.encoder!r} / {model.config.sentiment_labels}")
    state = trained.state_dict()
    ours = model.state_dict()
    wrong = sorted(k for k in ours if k not in state or state[k].shape != ours[k].shape)
    if wrong:
        raise ValueError(f"--init-from {directory}: {len(wrong)} weights missing or of another shape, e.g. {wrong[:3]}")
    model.load_state_dict({k: state[k] for k in ours})


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def predict_labels(model: AlignedClassifier, tokenizer, samples: list[Sample], descriptions: dict[str, str],
                   cfg: TrainConfig, device: torch.device) -> tuple[list[str], list[str | None]]:
    model.eval()
    sentiments: dict[str, str] = {}
    emotions: dict[str, str | None] = {}
    ordered = sorted(samples, key=lambda s: len(s.text) + len(descriptions.get(s.id, "")))
    for start in range(0, len(ordered), 64):
        batch = ordered[start:start + 64]
        encoded, _, _ = encode_batch(tokenizer, batch, descriptions, cfg.max_length,
                                     getattr(model.config, "target_format", "") or TARGET_FORMAT,
                                     **encoding_options(model.config))
        with autocast(device, cfg.bf16):
            out = model(**{k: v.to(device) for k, v in encoded.model_inputs().items()})
        logits = with_target_bias(out.sentiment_logits.float().cpu(), batch, model.config.target_bias)
        for s, i in zip(batch, logits.argmax(-1).tolist()):
            sentiments[s.id] = model.config.sentiment_labels[i]
        if out.emotion_logits is not None:
            for s, i in zip(batch, out.emotion_logits.argmax(-1).tolist()):
                emotions[s.id] = model.config.emotion_labels[i]
    return [sentiments[s.id] for s in samples], [emotions.get(s.id) for s in samples]


def with_target_bias(logits: torch.Tensor, batch: list[Sample], bias: tuple[float, ...]) -> torch.Tensor:
    """(B, C) logits with AlignedConfig.target_bias added to the rows of (post, target) samples, as serving adds
    it (model.targets.shift_scores on the probabilities: the same argmax)."""
    if not any(bias):
        return logits
    rows = torch.tensor([s.target is not None for s in batch])
    return logits + rows[:, None] * torch.tensor(bias, dtype=logits.dtype)


def evaluate_split(model, tokenizer, samples, descriptions, cfg, device) -> dict:
    from affectstream.training.evaluate import classification_metrics

    predicted, predicted_emotion = predict_labels(model, tokenizer, samples, descriptions, cfg, device)
    metrics = classification_metrics([s.label for s in samples], predicted, SENTIMENT_LABELS)
    with_emotion = [(s.emotion, e) for s, e in zip(samples, predicted_emotion) if s.emotion and e]
    if with_emotion:
        metrics["emotion"] = classification_metrics([t for t, _ in with_emotion], [p for _, p in with_emotion], EMOTION_LABELS)
    if any(s.target is not None for s in samples):  # multi-target posts: do targets that disagree get told apart?
        from affectstream.training.contrast import contrast_scores, sentence_key

        metrics["contrast"] = contrast_scores([sentence_key(s) for s in samples], [s.label for s in samples],
                                              predicted).as_dict()
    return metrics


# ---------------------------------------------------------------- checkpoints (safetensors + JSON; never pickle)

def save_weights(model: torch.nn.Module, path: Path) -> None:
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, state: dict, averaged=None) -> None:
    ckpt = run_dir / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    save_weights(model, ckpt / "model.safetensors")
    if averaged is not None:
        save_weights(averaged, ckpt / "averaged.safetensors")
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, str(ckpt / "optimizer.safetensors"))
    (ckpt / "state.json").write_text(json.dumps({**state, "optimizer_meta": opt_meta,
                                                 "scheduler": scheduler.state_dict()}, default=str))


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state_dict["param_groups"], "state": {}}
    for pid, pstate in state_dict["state"].items():
        meta["state"][str(pid)] = {}
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.contiguous()
            else:
                meta["state"][str(pid)][key] = value
    return tensors, meta


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, config: dict, averaged=None) -> dict | None:
    """Resume state, or None when there is no checkpoint or it belongs to a different configuration."""
    ckpt = run_dir / "checkpoint"
    if not (ckpt / "state.json").exists():
        return None
    state = json.loads((ckpt / "state.json").read_text())
    if state.get("config") != json.loads(json.dumps(config, default=str)):
        log.warning("ignoring checkpoint in %s: it was made with a different configuration", run_dir)
        return None
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    if averaged is not None:
        averaged.load_state_dict(load_file(str(ckpt / "averaged.safetensors")))
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    meta = state.pop("optimizer_meta")
    opt_state = {int(pid): dict(values) for pid, values in meta["state"].items()}
    for name, tensor in tensors.items():
        pid, key = name.split(".", 1)
        opt_state.setdefault(int(pid), {})[key] = tensor
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


# ---------------------------------------------------------------- the loop

def train(cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    started = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    run_dir, out_dir = Path(cfg.run_dir), Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    # data and descriptions (cached on disk by image hash and captioner)
    datasets = load_datasets(cfg)
    has_emotion = any(d.has_emotion for d in datasets)
    samples = [s for d in datasets for s in d.samples]
    captioner = build_captioner(cfg.captioner, device=device.type)
    descriptions, image_errors = describe_samples([s for s in samples if s.has_image], captioner, cfg.cache_dir)
    train_samples = [s for s in datasets[0].samples if s.split == "train"]
    for extra in datasets[1:]:
        cap = 0 if extra.name in cfg.uncapped_extras else cfg.max_extra_train
        train_samples += capped(extra.split("train"), cap, cfg.seed)
    if cfg.max_train_samples:
        train_samples = random.Random(cfg.seed).sample(train_samples, min(cfg.max_train_samples, len(train_samples)))
    dev_samples = [s for s in samples if s.split == "dev"]
    teacher = None
    if cfg.distill_from:  # the teacher's logits for every training post, computed once (cached on disk)
        from affectstream.training.distill import check_same_split, mix_distillation, teacher_logits

        check_same_split(cfg.distill_from, datasets[0])
        teacher = teacher_logits(cfg.distill_from, train_samples, descriptions, cfg.cache_dir, device)

    # model: pretrained encoder + fresh scorer and heads
    encoder, tokenizer = load_encoder(cfg.encoder)
    model_cfg = AlignedConfig(
        encoder=cfg.encoder, emotion_labels=EMOTION_LABELS if has_emotion else (), top_k=cfg.top_k,
        max_length=cfg.max_length, pooling=cfg.pooling, uniformity_weight=cfg.uniformity_weight,
        top_k_ratio=cfg.top_k_ratio, top_k_min=cfg.top_k_min, min_weight_share=cfg.min_weight_share,
        captioner=captioner.name, version=cfg.version or default_version(cfg), trained=True,
        target_format=TARGET_FORMAT if any(s.target is not None for s in train_samples) else "",
        text_normalization=cfg.text_normalization, token_selection=cfg.token_selection, training_data="+".join(d.name for d in datasets))
    model = AlignedClassifier(model_cfg, encoder).to(device)
    if cfg.init_from:
        init_from_trained(model, cfg.init_from)

    encoder_params = list(model.encoder.parameters())
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    optimizer = torch.optim.AdamW([{"params": encoder_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.head_lr}],
                                  weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_samples) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    # the weights that are scored on dev, kept as the best and exported: the model's, or their moving average
    averaged = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.weight_ema), use_buffers=True)
                if cfg.weight_ema > 0 else None)
    scored = averaged.module if averaged is not None else model
    history: list[dict] = []
    best = {"metric": -1.0, "epoch": 0}
    start_epoch, step = 1, 0
    best_state_path = run_dir / "best.safetensors"
    state = (load_checkpoint(run_dir, model, optimizer, scheduler, dataclasses.asdict(cfg), averaged)
             if cfg.resume else None)
    if state is not None:
        start_epoch, step, history, best = state["epoch"] + 1, state["step"], state["history"], state["best"]
        log.info("resumed from %s at epoch %d", run_dir, start_epoch)

    rng = random.Random(cfg.seed)
    for _ in range(1, start_epoch):  # replay the shuffles of finished epochs so a resumed run sees the same order
        length_bucketed_batches(train_samples, descriptions, cfg.batch_size, rng)
    log_file = (run_dir / "train_log.jsonl").open("a")
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        sums = {"loss": 0.0, "ce": 0.0, "uniformity": 0.0}
        batches = length_bucketed_batches(train_samples, descriptions, cfg.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not progress)
        for batch in bar:
            encoded, labels, emotions = encode_batch(tokenizer, batch, descriptions, cfg.max_length,
                                                     **encoding_options(model.config))
            progress_share = step / max(1, total_steps)
            with autocast(device, cfg.bf16):
                out = model(**{k: v.to(device) for k, v in encoded.model_inputs().items()},
                            select_all=progress_share < cfg.scorer_warmup)
            parts = aligned_objective(out.sentiment_logits, labels.to(device), out.pooled,
                                      uniformity_at(cfg, progress_share),
                                      out.emotion_logits, emotions.to(device) if has_emotion else None)
            if teacher is not None:
                parts = mix_distillation(parts, out.sentiment_logits, torch.stack([teacher[s.id] for s in batch]).to(device),
                                         cfg.distill_weight, cfg.distill_temperature)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(model)
            step += 1
            for key in sums:
                sums[key] += parts[key].item()
            record = {"epoch": epoch, "step": step, **{k: round(v.item(), 5) for k, v in parts.items()}}
            log_file.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{parts['loss'].item():.3f}")
        dev = evaluate_split(scored, tokenizer, dev_samples, descriptions, cfg, device)
        row = {"epoch": epoch, "step": step, **{f"train_{k}": v / max(1, len(batches)) for k, v in sums.items()},
               "dev_accuracy": dev["accuracy"], "dev_macro_f1": dev["macro_f1"], "dev_weighted_f1": dev["weighted_f1"]}
        history.append(row)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
        if progress:
            print(f"epoch {epoch}: train loss {row['train_loss']:.4f}  dev acc {dev['accuracy']:.4f}  "
                  f"dev macro-F1 {dev['macro_f1']:.4f}  dev weighted-F1 {dev['weighted_f1']:.4f}")
        if dev[cfg.metric] > best["metric"]:
            best = {"metric": dev[cfg.metric], "epoch": epoch}
            save_weights(scored, best_state_path)
        save_checkpoint(run_dir, model, optimizer, scheduler, {"epoch": epoch, "step": step, "history": history,
                                                               "best": best, "config": dataclasses.asdict(cfg)}, averaged)
        if epoch - best["epoch"] >= cfg.patience:
            log.info("early stop: no dev improvement for %d epochs", cfg.patience)
            break
    log_file.close()

    # best weights → class bias on the primary dev split → test metrics per dataset → export
    model.load_state_dict(load_file(str(best_state_path)))
    if cfg.serve_selection:  # serve choosing among other tokens than training did: bias fit, tests and export see it
        model.config.token_selection = cfg.serve_selection
    class_bias = None
    if cfg.class_bias:  # move the argmax boundary toward dev macro-F1 (the minority class, e.g. neutral, gains)
        from affectstream.training.calibrate import calibrate_model

        class_bias = calibrate_model(model, tokenizer, datasets[0].split("dev"), descriptions, cfg.max_length, device,
                                     cfg.bf16, fitted_on=f"{datasets[0].name} dev")
        from affectstream.training.calibrate import calibrate_target_sets

        if targets := calibrate_target_sets(model, tokenizer, datasets, descriptions, cfg.max_length, device, cfg.bf16):
            class_bias["targets"] = targets
    tests = {d.name: evaluate_split(model, tokenizer, d.split("test"), descriptions, cfg, device)
             for d in datasets if d.split("test")}
    metrics = {
        "version": model_cfg.version, "test": tests, "dev_best": best, "class_bias": class_bias, "history": history,
        "baselines": baselines_for(datasets),
        "data": {d.name: {"counts": d.counts(), "fingerprint": d.fingerprint(), "skipped": d.skipped,
                          "source": d.source, "citation": d.citation} for d in datasets},
        "image_errors": image_errors,
        "reproducibility": {"seed": cfg.seed, "git_commit": git_commit(), "config": dataclasses.asdict(cfg),
                            "torch": torch.__version__, "device": str(device)},
        "train_seconds": round(time.time() - started, 1),
    }
    export(model, tokenizer, out_dir, metrics, datasets, dtype=cfg.export_dtype)
    return TrainResult(out_dir=out_dir, metrics=metrics, history=history)


def baselines_for(datasets: list[Dataset]) -> dict:
    """Each dataset kind's reference predictor (KINDS[kind].baseline, e.g. VADER's rule analyzer for the
    VADER tweets) on the same test split."""
    from affectstream.training.baselines import BASELINES
    from affectstream.training.evaluate import classification_metrics

    out = {}
    for d in datasets:
        test, baseline = d.split("test"), KINDS[d.kind].baseline if d.kind in KINDS else None
        if test and baseline:
            predicted = BASELINES[baseline](test)
            out[d.name] = {baseline: classification_metrics([s.label for s in test], predicted, SENTIMENT_LABELS)}
    return out


def export(model, tokenizer, out_dir: Path, metrics: dict, datasets: list[Dataset], ablations: list[dict] | None = None,
           dtype: str = "fp32") -> None:
    """Deployed directory: weights + tokenizer + config, metrics.json, card.md and its plots; bf16 weights
    when `dtype` says so (the model is cast in place: export is the last thing a run does)."""
    from affectstream.training.card import build_card
    from affectstream.training.plots import plot_confusion, plot_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [plot_curves(metrics["history"], out_dir / "curves.png").name]
    for name, test in metrics["test"].items():
        plots.append(plot_confusion(test, out_dir / f"confusion-{slug(name)}.png", title=f"{name} test").name)
    card = build_card(model.config.method_options(), metrics, datasets, plots, ablations)
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"export dtype must be fp32 or bf16, got {dtype!r}")
    save_deployed(model.to(torch.bfloat16) if dtype == "bf16" else model, tokenizer, out_dir, metrics=metrics, card=card)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name.lower())


def default_version(cfg: TrainConfig) -> str:
    encoder = "minilm" if cfg.encoder == "offline" else Path(cfg.encoder).name
    return f"{cfg.dataset}-{encoder}-{datetime.now(timezone.utc):%Y%m%d%H%M}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
