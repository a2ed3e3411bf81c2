"""A per-class bias on the sentiment logits, fitted on a dev split to maximise macro-F1 (logit adjustment).

Why: cross-entropy on an imbalanced split (VADER tweets: 55 % positive, 20 % neutral) ranks the classes well
but puts the argmax boundary where accuracy, not macro-F1, is best; the minority class (neutral) loses recall.
An additive bias b moves the boundary without touching the weights: predicted = argmax(logits + b).

The fit is a coordinate search over a grid: one class at a time, every grid value is tried for its bias with
the others fixed, the best kept; sweeps repeat until nothing changes. The first class stays at 0 (only
differences between biases matter). Macro-F1 is a step function, so ties are common: the smallest |b| wins,
i.e. the bias moves only as far as the dev split asks. Fit on dev only; the test split stays untouched.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

GRID = tuple(round(-2.0 + 0.05 * i, 2) for i in range(81))  # -2.00 .. 2.00 in steps of 0.05


@dataclass
class BiasFit:
    bias: list[float]           # per class, added to the sentiment logits
    dev_macro_f1_before: float
    dev_macro_f1_after: float
    n: int                      # dev samples it was fitted on


def macro_f1(predicted: torch.Tensor, truth: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Macro-F1 of each row of `predicted` (G, N) against `truth` (N,): (G,). 0/0 counts as 0, as in
    training.evaluate.classification_metrics (which this matches for every class in range(n_classes))."""
    classes = torch.arange(n_classes).view(1, -1, 1)                       # (1, C, 1)
    pred_is = predicted.unsqueeze(1) == classes                              # (G, C, N)
    true_is = (truth.view(1, 1, -1) == classes)                              # (1, C, N)
    tp = (pred_is & true_is).sum(-1).double()                                # (G, C)
    f1 = 2 * tp / (pred_is.sum(-1) + true_is.sum(-1)).double().clamp(min=1)  # 2PR/(P+R) = 2tp/(pred+true)
    return f1.mean(-1)


def fit_bias(logits: torch.Tensor, truth: torch.Tensor, grid: tuple[float, ...] = GRID,
             max_sweeps: int = 10) -> BiasFit:
    """`logits` (N, C) of a dev split, `truth` (N,) class indices -> the bias maximising dev macro-F1."""
    logits, truth = logits.detach().double().cpu(), truth.cpu()
    n_classes = logits.shape[1]
    values = torch.tensor(grid, dtype=torch.double)                          # (G,)
    order = values.abs().argsort(stable=True)                                # ties: the smallest |b| first
    values = values[order]
    bias = torch.zeros(n_classes, dtype=torch.double)

    def score(b: torch.Tensor) -> float:
        return macro_f1((logits + b).argmax(-1).unsqueeze(0), truth, n_classes).item()

    before = best = score(bias)
    for _ in range(max_sweeps):
        moved = False
        for c in range(1, n_classes):
            candidates = bias.repeat(len(values), 1)                         # (G, C)
            candidates[:, c] = values
            scores = macro_f1((logits.unsqueeze(0) + candidates.unsqueeze(1)).argmax(-1), truth, n_classes)  # (G,)
            i = int(scores.argmax())                                         # first maximum: smallest |b|
            if scores[i] > best + 1e-12:
                best, bias, moved = scores[i].item(), candidates[i], True
        if not moved:
            break
    return BiasFit(bias=[round(float(b), 4) for b in bias], dev_macro_f1_before=before, dev_macro_f1_after=best,
                   n=len(truth))


@torch.no_grad()
def sentiment_logits(model, tokenizer, samples, descriptions: dict[str, str], max_length: int,
                     device: torch.device, bf16: bool = True) -> torch.Tensor:
    """The model's sentiment logits (N, C) for `samples`, in their order, read exactly as evaluation reads
    them (training.train.encode_batch: the model's target format, text normalisation and token selection). The bias the model
    already carries is included (forward adds it); fit_bias then finds the change on top of it."""
    from affectstream.model.device import autocast
    from affectstream.model.targets import TARGET_FORMAT
    from affectstream.model.tokenization import encoding_options
    from affectstream.training.batches import encode_batch

    model.eval()
    # batched as training.train.predict_labels batches (by length, 64 a batch): under bf16 autocast the padding
    # of a batch moves logits in the last digits, and the fit should see the logits evaluation will see
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].text) + len(descriptions.get(samples[i].id, "")))
    rows = []
    for start in range(0, len(order), 64):
        batch = [samples[i] for i in order[start:start + 64]]
        encoded, _, _ = encode_batch(tokenizer, batch, descriptions, max_length,
                                     getattr(model.config, "target_format", "") or TARGET_FORMAT,
                                     **encoding_options(model.config))
        with autocast(device, bf16):
            out = model(**{k: v.to(device) for k, v in encoded.model_inputs().items()})
        rows.append(out.sentiment_logits.float().cpu())
    logits = torch.empty(len(samples), rows[0].shape[1]) if rows else torch.empty(0, len(model.config.sentiment_labels))
    if rows:
        logits[torch.tensor(order)] = torch.cat(rows)                  # back to the order of `samples`
    return logits


def label_indices(samples, labels: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([labels.index(s.label) for s in samples])


def calibrate_targets(model, tokenizer, dev_samples, descriptions: dict[str, str], max_length: int,
                      device: torch.device, bf16: bool = True, fitted_on: str = "dev") -> dict:
    """The target-level boundary: fit a bias on the (post, target) samples of `dev_samples`, on top of the
    post-level bias forward adds and the target bias the model carries, into `model.config.target_bias`."""
    labels = tuple(model.config.sentiment_labels)
    targets = [s for s in dev_samples if s.target is not None]
    current = model.config.target_bias or (0.0,) * len(labels)
    logits = sentiment_logits(model, tokenizer, targets, descriptions, max_length, device, bf16) + torch.tensor(current)
    fit = fit_bias(logits, label_indices(targets, labels))
    model.config.target_bias = tuple(round(c + b, 4) for c, b in zip(current, fit.bias))
    return {"bias": dict(zip(labels, model.config.target_bias)), "fitted_on": fitted_on, "n": fit.n,
            "objective": "macro_f1", "dev_macro_f1_before": fit.dev_macro_f1_before,
            "dev_macro_f1_after": fit.dev_macro_f1_after}


def calibrate_target_sets(model, tokenizer, datasets: list, descriptions: dict[str, str], max_length: int,
                          device: torch.device, bf16: bool = True) -> dict | None:
    """The target-level bias of a joint model (post-level primary set, (post, target) extra sets), fitted on
    the extra sets' target dev samples; None for a model that has no such sets."""
    primary_dev = datasets[0].split("dev")
    target_sets = [d for d in datasets[1:] if any(s.target is not None for s in d.split("dev"))]
    if not target_sets or not primary_dev or primary_dev[0].target is not None:
        return None
    target_dev = [s for d in target_sets for s in d.split("dev") if s.target is not None]
    return calibrate_targets(model, tokenizer, target_dev, descriptions, max_length, device, bf16,
                             fitted_on=" + ".join(d.name for d in target_sets) + " dev")


def calibrate_model(model, tokenizer, dev_samples, descriptions: dict[str, str], max_length: int,
                    device: torch.device, bf16: bool = True, fitted_on: str = "dev") -> dict:
    """Fit a bias on `dev_samples` on top of the one the model carries and store the sum in
    `model.config.sentiment_bias` (forward adds it from then on). Returns what metrics.json records."""
    labels = tuple(model.config.sentiment_labels)
    logits = sentiment_logits(model, tokenizer, dev_samples, descriptions, max_length, device, bf16)
    fit = fit_bias(logits, label_indices(dev_samples, labels))
    current = model.config.sentiment_bias or (0.0,) * len(labels)
    model.config.sentiment_bias = tuple(round(c + b, 4) for c, b in zip(current, fit.bias))
    return {"bias": dict(zip(labels, model.config.sentiment_bias)), "fitted_on": fitted_on, "n": fit.n,
            "objective": "macro_f1", "grid": [min(GRID), max(GRID), round(GRID[1] - GRID[0], 4)],
            "dev_macro_f1_before": fit.dev_macro_f1_before, "dev_macro_f1_after": fit.dev_macro_f1_after}
