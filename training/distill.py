"""Knowledge distillation from a fine-tuned teacher model directory (e.g. an aligned MPNet-base model) into
the student the trainer trains (Hinton et al., 2015):

    L = (1 − α)·CE + α·T²·KL(softmax(teacher / T) ‖ softmax(student / T)) + λ·L_uni (+ emotion CE)

The teacher's soft labels carry how close each post is to the other classes (a neutral-ish negative), which
one-hot labels do not. The teacher's logits are computed once per sample id and cached on disk, keyed by its
weights and config, so another student run with the same teacher costs no teacher forward passes.

Honesty: the teacher has seen its own training split, so a student is only scored honestly on a test split
the teacher never trained on. `check_same_split` refuses a student whose primary split differs from the
teacher's (compared by the data fingerprint: sha256 of id, label and split); to vary the student's init seed
with the teacher's split fixed, give the student the teacher's split as a split file.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), mean over the batch; the T² keeps its gradient on the
    scale of the cross-entropy's whatever T is."""
    t = temperature
    log_student = F.log_softmax(student_logits.float() / t, dim=-1)         # (B, C)
    log_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)         # (B, C)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * t * t


def mix_distillation(parts: dict[str, torch.Tensor], student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     weight: float, temperature: float) -> dict[str, torch.Tensor]:
    """`parts` of `model.losses.aligned_objective` with the sentiment CE's share α moved to the distillation
    term: loss − α·CE + α·KD. Adds "distill" to the parts (logged per step)."""
    kd = distill_loss(student_logits, teacher_logits, temperature)
    return {**parts, "loss": parts["loss"] - weight * parts["ce"] + weight * kd, "distill": kd}


def teacher_fingerprint(teacher_dir: str | Path) -> str:
    """sha256 over the teacher's weights and config: the cache key of its logits."""
    digest = hashlib.sha256()
    for name in ("model.safetensors", "config.json"):
        with (Path(teacher_dir) / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_same_split(teacher_dir: str | Path, primary) -> None:
    """Refuse a student whose primary data set is split differently from the teacher's (its test split would
    hold posts the teacher trained on, and the teacher's knowledge of them would leak into the student)."""
    metrics = json.loads((Path(teacher_dir) / "metrics.json").read_text())
    theirs = metrics.get("data", {}).get(primary.name, {}).get("fingerprint")
    if theirs != primary.fingerprint():
        raise ValueError(f"the teacher {teacher_dir} was trained on a different split of {primary.name} "
                         f"(fingerprint {theirs} vs the student's {primary.fingerprint()}): train the student on the "
                         "teacher's split (its seed, or a split file written from it)")


def teacher_logits(teacher_dir: str | Path, samples, descriptions: dict[str, str], cache_dir: str | Path,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """sample id → the teacher's sentiment logits (C,), from the cache where present, else computed."""
    from affectstream.model.deploy import load_deployed
    from affectstream.training.calibrate import sentiment_logits

    cache = Path(cache_dir).parent / "teachers" / f"{teacher_fingerprint(teacher_dir)[:24]}.json"
    known: dict[str, list[float]] = json.loads(cache.read_text()) if cache.is_file() else {}
    missing = [s for s in samples if s.id not in known]
    if missing:
        model, tokenizer, config = load_deployed(teacher_dir)
        model.to(device)
        # the teacher's own bias (if it has one) moves its argmax, not the similarities KD is after
        config.sentiment_bias = ()
        logits = sentiment_logits(model, tokenizer, missing, descriptions, config.max_length, device)
        known |= {s.id: row.tolist() for s, row in zip(missing, logits)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known))
    return {s.id: torch.tensor(known[s.id]) for s in samples}
