"""Distillation: the KD term is zero when the student matches the teacher and pulls it toward the teacher's
soft labels; a student trains from a teacher directory and refuses a teacher trained on another split."""
import json

import pytest
import torch

from affectstream.training.config import PRESETS
from affectstream.training.distill import distill_loss, mix_distillation
from affectstream.training.train import train
from tests.dataset_fixtures import write_keyword_jsonl


def test_distill_loss_is_zero_at_the_teacher_and_its_gradient_points_to_it():
    teacher = torch.tensor([[2.0, 0.5, -1.0], [-1.0, 0.0, 3.0]])
    assert distill_loss(teacher.clone(), teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.zeros_like(teacher, requires_grad=True)
    loss = distill_loss(student, teacher, 2.0)
    assert loss.item() > 0
    loss.backward()
    # gradient descent raises the student's logit where the teacher's is highest
    assert (-student.grad).argmax(-1).tolist() == teacher.argmax(-1).tolist()


def test_mix_moves_the_ce_share_to_the_kd_term():
    parts = {"loss": torch.tensor(3.0), "ce": torch.tensor(2.0), "uniformity": torch.tensor(0.5)}
    teacher = torch.tensor([[1.0, 0.0, -1.0]])
    mixed = mix_distillation(parts, teacher.clone(), teacher, weight=0.25, temperature=2.0)
    assert mixed["loss"].item() == pytest.approx(3.0 - 0.25 * 2.0)   # KD is 0 at the teacher
    assert mixed["distill"].item() == pytest.approx(0.0, abs=1e-7) and mixed["ce"] is parts["ce"]


@pytest.fixture(scope="module")
def posts(tmp_path_factory):
    return write_keyword_jsonl(tmp_path_factory.mktemp("data") / "posts.jsonl", 180, prefix="d")


def test_student_trains_from_a_teacher_and_refuses_another_split(tmp_path, posts):
    base = PRESETS["tiny"].replace(dataset="jsonl", data_path=str(posts), cache_dir=str(tmp_path / "cache" / "d"), epochs=2)
    teacher = train(base.replace(out_dir=str(tmp_path / "teacher"), run_dir=str(tmp_path / "t-run")), progress=False)
    student = train(base.replace(out_dir=str(tmp_path / "student"), run_dir=str(tmp_path / "s-run"),
                                 distill_from=str(teacher.out_dir)), progress=False)
    steps = [json.loads(line) for line in (tmp_path / "s-run" / "train_log.jsonl").read_text().splitlines()]
    assert all("distill" in step for step in steps) and steps[-1]["distill"] < steps[0]["distill"]
    assert student.metrics["reproducibility"]["config"]["distill_from"] == str(teacher.out_dir)
    assert list((tmp_path / "cache" / "teachers").glob("*.json"))   # the teacher's logits are cached
    with pytest.raises(ValueError, match="different split"):
        train(base.replace(seed=14, out_dir=str(tmp_path / "s2"), run_dir=str(tmp_path / "s2-run"),
                           distill_from=str(teacher.out_dir)), progress=False)
