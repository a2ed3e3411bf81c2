"""Classification metrics and plain-text reports, in plain Python (no scikit-learn).

Two averaging conventions matter because the published targets use both:

- MVSA papers report accuracy and **weighted F1**: per-class F1 averaged with each class weighted by its
  support (number of true samples), ``weighted_f1 = Σ_c f1_c · support_c / n``.
- MSED reports **macro** precision, recall and F1: the unweighted mean over the classes in ``labels``.

Every label in ``labels`` is counted, including one absent from both ``y_true`` and ``y_pred`` (support
0, all scores 0.0), as scikit-learn does when given ``labels=`` and ``zero_division=0``. A 0/0 is 0.0.
"""
from __future__ import annotations

import math
from typing import Any


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def classification_metrics(y_true: list[str], y_pred: list[str], labels: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, weighted F1, macro P/R/F1, per-class scores and the confusion matrix.

    ``confusion[i][j]`` counts samples whose true label is ``labels[i]`` and predicted label ``labels[j]``.
    """
    labels = tuple(labels)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {labels}")
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({y for y in (*y_true, *y_pred) if y not in index})
    if unknown:
        raise ValueError(f"labels {unknown} not in {labels}")

    k = len(labels)
    confusion = [[0] * k for _ in range(k)]  # rows: true, cols: predicted
    for t, p in zip(y_true, y_pred):
        confusion[index[t]][index[p]] += 1

    n = len(y_true)
    per_class: dict[str, dict[str, float | int]] = {}
    for i, lab in enumerate(labels):
        tp = confusion[i][i]
        support = sum(confusion[i])                      # true samples of this class
        predicted = sum(confusion[r][i] for r in range(k))  # samples predicted as this class
        precision = _ratio(tp, predicted)
        recall = _ratio(tp, support)
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class[lab] = {"precision": precision, "recall": recall, "f1": f1, "support": support}

    def macro(key: str) -> float:
        return _ratio(sum(per_class[lab][key] for lab in labels), k)

    def weighted(key: str) -> float:
        return _ratio(sum(per_class[lab][key] * per_class[lab]["support"] for lab in labels), n)

    return {
        "n": n,
        "accuracy": _ratio(sum(confusion[i][i] for i in range(k)), n),
        "weighted_f1": weighted("f1"),
        "weighted_precision": weighted("precision"),
        "weighted_recall": weighted("recall"),
        "macro_precision": macro("precision"),
        "macro_recall": macro("recall"),
        "macro_f1": macro("f1"),
        "per_class": per_class,
        "confusion": confusion,
        "labels": list(labels),
    }


def format_report(metrics: dict[str, Any], title: str = "") -> str:
    """A per-class table in the layout of scikit-learn's ``classification_report``, then the confusion
    matrix (rows true, columns predicted)."""
    labels = list(metrics["labels"])
    n = metrics["n"]
    width = max([len(lab) for lab in labels] + [len("weighted avg")])
    head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
    lines = [title, ""] if title else []
    lines += [head, ""]
    for lab in labels:
        c = metrics["per_class"][lab]
        lines.append(f"{lab:>{width}} {c['precision']:>9.4f} {c['recall']:>9.4f} {c['f1']:>9.4f} {c['support']:>9d}")
    lines.append("")
    lines.append(f"{'accuracy':>{width}} {'':>9} {'':>9} {metrics['accuracy']:>9.4f} {n:>9d}")
    lines.append(f"{'macro avg':>{width}} {metrics['macro_precision']:>9.4f} {metrics['macro_recall']:>9.4f} "
                 f"{metrics['macro_f1']:>9.4f} {n:>9d}")
    wp = metrics.get("weighted_precision")
    wr = metrics.get("weighted_recall")
    lines.append(f"{'weighted avg':>{width}} {_num(wp, 9)} {_num(wr, 9)} {metrics['weighted_f1']:>9.4f} {n:>9d}")

    # Confusion matrix: one column per predicted label, wide enough for the label and the largest count.
    confusion = metrics["confusion"]
    cell = max([len(lab) for lab in labels] + [len(str(v)) for row in confusion for v in row] + [1])
    lines += ["", "confusion (rows: true, columns: predicted)",
              f"{'':>{width}} " + " ".join(f"{lab:>{cell}}" for lab in labels)]
    for lab, row in zip(labels, confusion):
        lines.append(f"{lab:>{width}} " + " ".join(f"{v:>{cell}d}" for v in row))
    return "\n".join(lines) + "\n"


def _num(value: Any, width: int) -> str:
    return f"{value:>{width}.4f}" if isinstance(value, (int, float)) else f"{'':>{width}}"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned text table: text columns left-aligned, numeric columns right-aligned, floats to 4
    decimals; a missing value is an empty cell."""
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    numeric = [all(isinstance(row.get(col), (int, float)) and not isinstance(row.get(col), bool)
                   for row in rows if row.get(col) is not None) and any(row.get(col) is not None for row in rows)
               for col in columns]
    widths = [max([len(col)] + [len(r[j]) for r in cells]) for j, col in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out) + "\n"
