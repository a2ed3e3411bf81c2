"""Retraining with analysts' corrections, the pure part: which corrections train and which are held out, how
they are mixed with the base training data, the flood guard, training the candidate with the ordinary
training loop, the one comparison table (deployed vs candidate, same test sets, same descriptions, same
seed) and the decision. No Kafka, no Redis, no registry: ``streaming/tools/retrain_job.py`` does the I/O.

Mixing (``RetrainOptions``, documented defaults):

* **latest wins**: of several corrections of the same post (and target), the one with the newest ``ts``;
* **de-duplicated**: corrected posts with the same normalised text (reposts) become one example, the
  newest correction's label; a correction whose text is in a base dev or test split is not trained on
  (it would leak into the figures that decide); one whose text is in the base training split trains with
  the corrected label, and outweighs the old one (below);
* **held out**: a fixed share (``holdout_share``, 20 %) of the corrected posts, chosen by a hash of the post
  id (``holdout_salt``) — the same post stays on the same side in every run, so the held-out figures of two
  candidates compare, and nothing the candidate was trained on is scored as held out;
* **weighting**: each training correction appears ``correction_weight`` times (3) in the training data: a
  correction is a human label on live traffic, where the base data's labels are a proxy for it, but three
  copies keep one analyst from outweighing a whole class (the base sets hold thousands per class);
* post-level corrections only: a correction of one brand target is kept, shown and counted, but the JSONL
  training format has no target field yet, so it does not train (counted as ``target_level`` in the table).

The flood guard (``flood_reasons``): corrections that would flip most of a class are refused before any
training — for a class c, the corrections moving posts *out of* c must not exceed ``max_class_flip`` (50 %)
of c's base training examples. That is an outcome an analyst flood, a bad bulk file or a compromised
account would produce, and no retrain should quietly learn it.

The decision (``decide``): the candidate is proposed only if on every base test set its ``metric``
(macro-F1) is no more than ``tolerance`` (0.02 absolute) below the deployed model's. The held-out
corrections are reported next to it; they do not decide (a few dozen posts are too noisy to veto on).
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import orjson

from affectstream.model.config import SENTIMENT_LABELS
from affectstream.training.config import TrainConfig
from affectstream.training.samples import Dataset, Sample

HELD_OUT = "held-out corrections"


@dataclass(frozen=True)
class RetrainOptions:
    correction_weight: int = 3          # copies of each training correction in the training data
    holdout_share: float = 0.2          # share of corrected posts held out (by a hash of the post id)
    holdout_salt: str = "affectstream-holdout-v1"
    tolerance: float = 0.02             # largest drop of `metric` on any base test set still proposed
    metric: str = "macro_f1"
    max_class_flip: float = 0.5         # corrections out of a class / its base training examples
    min_corrections: int = 1            # fewer usable corrections: nothing to retrain on
    sabotage: bool = False              # drills and tests: train with zero learning rates (a bad candidate)

    def __post_init__(self) -> None:
        if self.correction_weight < 1:
            raise ValueError("correction_weight must be >= 1")
        if not 0.0 <= self.holdout_share < 1.0:
            raise ValueError("holdout_share must be in [0, 1)")
        if self.tolerance < 0 or not 0 < self.max_class_flip:
            raise ValueError("tolerance must be >= 0 and max_class_flip > 0")


@dataclass(frozen=True)
class CorrectedPost:
    """One analyst correction joined with the post it corrects (the text the model read)."""
    post_id: str
    target: str | None
    text: str
    caption: str
    label: str
    old_label: str
    analyst: str
    ts: int
    model: str = ""


@dataclass
class Mix:
    train: list[CorrectedPost]
    held_out: list[CorrectedPost]
    counts: dict[str, int] = field(default_factory=dict)   # what happened to the corrections, by reason

    def fingerprint(self) -> str:
        """sha256 over the training and held-out corrections (id, target, label, side)."""
        h = hashlib.sha256()
        for side, posts in (("train", self.train), ("held", self.held_out)):
            for p in sorted(posts, key=lambda p: (p.post_id, p.target or "")):
                h.update(f"{side}\t{p.post_id}\t{p.target or ''}\t{p.label}\n".encode("utf-8", "surrogatepass"))
        return h.hexdigest()


def normalise(text: str) -> str:
    """The de-duplication key of a text: NFKC, case-folded, whitespace collapsed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def held_out(post_id: str, share: float, salt: str) -> bool:
    digest = hashlib.sha256(f"{salt}:{post_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < share


def mix_corrections(corrections: Iterable[CorrectedPost], base: list[Dataset], options: RetrainOptions) -> Mix:
    """Latest per (post, target), post-level only, de-duplicated by text, split into train / held out."""
    counts: Counter[str] = Counter()
    latest: dict[tuple[str, str], CorrectedPost] = {}
    for c in corrections:
        counts["received"] += 1
        if c.label not in SENTIMENT_LABELS:
            counts["label_not_trainable"] += 1
            continue
        key = (c.post_id, c.target or "")
        if key in latest:
            counts["superseded"] += 1            # one of the two is not the latest
            if latest[key].ts > c.ts:
                continue
        latest[key] = c
    by_text: dict[str, CorrectedPost] = {}
    for c in sorted(latest.values(), key=lambda c: c.ts):
        if c.target is not None:
            counts["target_level"] += 1
            continue
        if not c.text.strip():
            counts["no_text"] += 1
            continue
        text = normalise(c.text)
        if text in by_text:
            counts["duplicate_text"] += 1
        by_text[text] = c                       # the newest correction of a text wins
    evaluation_texts = {normalise(s.text) for d in base for s in d.samples if s.split in ("dev", "test")}
    train_texts = {normalise(s.text) for d in base for s in d.samples if s.split == "train"}
    train, held = [], []
    for text, c in by_text.items():
        if held_out(c.post_id, options.holdout_share, options.holdout_salt):
            held.append(c)
        elif text in evaluation_texts:
            counts["in_base_eval_split"] += 1
        else:
            counts["overrides_base_train"] += text in train_texts
            train.append(c)
    counts["train"], counts["held_out"] = len(train), len(held)
    return Mix(train=train, held_out=held, counts=dict(counts))


def flood_reasons(mix: Mix, base: list[Dataset], options: RetrainOptions) -> list[str]:
    """Why the corrections would flip most of a class (empty: they would not)."""
    base_train = Counter(s.label for d in base for s in d.samples if s.split == "train")
    out_of = Counter(c.old_label for c in (*mix.train, *mix.held_out) if c.old_label != c.label)
    reasons = []
    for label, moved in sorted(out_of.items()):
        if label in SENTIMENT_LABELS and moved > options.max_class_flip * base_train.get(label, 0):
            reasons.append(f"class_flood: {moved} corrections move posts out of {label!r}, more than "
                           f"{options.max_class_flip:.0%} of its {base_train.get(label, 0)} base training examples")
    return reasons


def corrections_jsonl(mix: Mix, options: RetrainOptions) -> bytes:
    """The corrections as one ``jsonl`` dataset (training.datasets.jsonl): each training correction
    ``correction_weight`` times (split train), each held-out one once (split test)."""
    lines = []
    for c in mix.train:
        for copy in range(options.correction_weight):
            lines.append(orjson.dumps({"id": f"fb:{c.post_id}#{copy}", "text": c.text, "label": c.label,
                                       "split": "train"}))
    for c in mix.held_out:
        lines.append(orjson.dumps({"id": f"fb:{c.post_id}", "text": c.text, "label": c.label, "split": "test"}))
    return b"\n".join(lines) + b"\n"


def held_out_samples(mix: Mix) -> tuple[list[Sample], dict[str, str]]:
    """The held-out corrections as test samples, and the descriptions serving gave them (their captions)."""
    samples = [Sample(id=f"fb:{c.post_id}", text=c.text, label=c.label, split="test") for c in mix.held_out]
    return samples, {f"fb:{c.post_id}": c.caption for c in mix.held_out}


def candidate_config(cfg: TrainConfig, corrections_file: Path, out_dir: Path, run_dir: Path,
                     options: RetrainOptions) -> TrainConfig:
    """The preset's config with the corrections as one more dataset, written to the job's own folders."""
    changes: dict[str, Any] = dict(extra_datasets=(*cfg.extra_datasets, f"jsonl={corrections_file}"),
                                   out_dir=str(out_dir), run_dir=str(run_dir), resume=False)
    if options.sabotage:
        changes.update(lr=0.0, head_lr=0.0)
    return cfg.replace(**changes)


# --- evaluation and the decision ---------------------------------------------------------------------

def evaluate_model(model_dir: str | Path, sets: dict[str, list[Sample]], given: dict[str, str],
                   cfg: TrainConfig) -> dict[str, dict]:
    """A deployed directory's metrics on each named sample list. Image samples are described by the model's
    own captioner (cached); ``given`` descriptions (held-out corrections: their served captions) win."""
    from affectstream.model.captioners import build_captioner
    from affectstream.model.deploy import load_deployed
    from affectstream.model.device import pick_device
    from affectstream.training.descriptions import describe_samples
    from affectstream.training.train import evaluate_split

    model, tokenizer, model_cfg = load_deployed(model_dir)
    device = pick_device(cfg.device)
    model.to(device)
    every = [s for samples in sets.values() for s in samples if s.has_image and s.id not in given]
    descriptions, _ = describe_samples(every, build_captioner(model_cfg.captioner, device=device.type), cfg.cache_dir)
    descriptions.update(given)
    eval_cfg = cfg.replace(max_length=model_cfg.max_length)
    return {name: evaluate_split(model, tokenizer, samples, descriptions, eval_cfg, device)
            for name, samples in sets.items() if samples}


@dataclass
class Decision:
    proposed: bool
    reasons: list[str]
    rows: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def decide(deployed: dict[str, dict], candidate: dict[str, dict], base_sets: list[str],
           options: RetrainOptions) -> Decision:
    """One row per test set (deployed, candidate, change) and whether the candidate may be proposed."""
    rows, reasons = [], []
    for name in [*base_sets, *(n for n in candidate if n not in base_sets)]:
        if name not in candidate or name not in deployed:
            continue
        d, c = deployed[name], candidate[name]
        delta = c[options.metric] - d[options.metric]
        worse = name in base_sets and delta < -options.tolerance
        rows.append({"test set": name, "n": c["n"], "deployed acc": d["accuracy"], "candidate acc": c["accuracy"],
                     f"deployed {options.metric}": d[options.metric], f"candidate {options.metric}": c[options.metric],
                     "change": delta, "verdict": "worse" if worse else ("decides" if name in base_sets else "reported")})
        if worse:
            reasons.append(f"worse on {name}: {options.metric} {c[options.metric]:.4f} vs {d[options.metric]:.4f} "
                           f"({delta:+.4f}, tolerance {options.tolerance})")
    if not any(r["test set"] in base_sets for r in rows):
        reasons.append("no base test set to compare on")
    return Decision(proposed=not reasons, reasons=reasons, rows=rows)


def render_decision(decision: Decision, options: RetrainOptions, header: str = "") -> str:
    from affectstream.training.evaluate import format_table

    columns = ["test set", "n", "deployed acc", "candidate acc", f"deployed {options.metric}",
               f"candidate {options.metric}", "change", "verdict"]
    verdict = ("PROPOSED" if decision.proposed else "NOT PROPOSED: " + "; ".join(decision.reasons))
    return (header + "\n" if header else "") + format_table(decision.rows, columns) + verdict + "\n"


# --- the whole retrain -------------------------------------------------------------------------------

@dataclass
class RetrainResult:
    status: str                          # "proposed" | "refused" | "nothing_to_do"
    reasons: list[str]
    table: str
    mix: Mix
    decision: Decision | None = None
    candidate_dir: Path | None = None
    train_metrics: dict | None = None
    data: dict = field(default_factory=dict)   # base datasets' fingerprints and the corrections' hash
    seconds: dict = field(default_factory=dict)


def retrain(cfg: TrainConfig, corrections: list[CorrectedPost], deployed_dir: str | Path, work_dir: str | Path,
            options: RetrainOptions = RetrainOptions(), *, progress: bool = False) -> RetrainResult:
    """Mix, guard, train a candidate (``cfg``: the preset, e.g. ``PRESETS["default"]``), evaluate it and the
    deployed model on the base test sets and the held-out corrections, decide. The candidate is written to
    ``work_dir/candidate``; registering it is the caller's."""
    import time

    from affectstream.training.train import load_datasets, train

    started = time.perf_counter()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    base = load_datasets(cfg)
    mix = mix_corrections(corrections, base, options)
    data = {"base": {d.name: d.fingerprint() for d in base}, "corrections": mix.fingerprint()}
    header = (f"retrain: {mix.counts.get('train', 0)} corrections x{options.correction_weight} trained, "
              f"{mix.counts.get('held_out', 0)} held out; seed {cfg.seed}; counts {dict(sorted(mix.counts.items()))}")
    if len(mix.train) < options.min_corrections:
        reason = f"only {len(mix.train)} usable training corrections (need {options.min_corrections})"
        return RetrainResult("nothing_to_do", [reason], header + "\n" + reason + "\n", mix, data=data)
    flood = flood_reasons(mix, base, options)
    if flood:
        return RetrainResult("refused", flood, header + "\nNOT PROPOSED: " + "; ".join(flood) + "\n", mix, data=data)
    corrections_file = work / "corrections.jsonl"
    corrections_file.write_bytes(corrections_jsonl(mix, options))
    candidate_cfg = candidate_config(cfg, corrections_file, work / "candidate", work / "run", options)
    mixed = time.perf_counter()
    trained = train(candidate_cfg, progress=progress)
    trained_at = time.perf_counter()
    held, captions = held_out_samples(mix)
    sets = {d.name: d.split("test") for d in base}
    sets[HELD_OUT] = held
    deployed = evaluate_model(deployed_dir, sets, captions, cfg)
    candidate = evaluate_model(trained.out_dir, sets, captions, cfg)
    decision = decide(deployed, candidate, [d.name for d in base if d.split("test")], options)
    done = time.perf_counter()
    seconds = {"prepare": round(mixed - started, 1), "train": round(trained_at - mixed, 1),
               "evaluate": round(done - trained_at, 1), "total": round(done - started, 1)}
    return RetrainResult("proposed" if decision.proposed else "refused", decision.reasons,
                         render_decision(decision, options, header), mix, decision, trained.out_dir,
                         trained.metrics, data, seconds)
