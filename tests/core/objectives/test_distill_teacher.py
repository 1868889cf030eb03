"""BYOL's distillation loss, the representation anchor, FedProx's term and the EMA teacher, by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedvlp.core.objectives.distill import byol_loss
from fedvlp.core.objectives.teacher import GlobalTeacher, anchor_loss, proximal_term


# ----------------------------------------------------------------------------- byol_loss
def test_byol_loss_of_identical_vectors_is_zero() -> None:
    # 2 - 2 x cos 0 = 2 - 2 = 0 (the norm does not matter)
    assert byol_loss(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.6, 0.8]])).item() == pytest.approx(0.0, abs=1e-6)


def test_byol_loss_of_orthogonal_vectors_is_two() -> None:
    # 2 - 2 x 0
    assert byol_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(2.0)


def test_byol_loss_of_opposite_vectors_is_four() -> None:
    # 2 - 2 x (-1)
    assert byol_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[-2.0, 0.0]])).item() == pytest.approx(4.0)


def test_byol_loss_matches_a_hand_computed_cosine() -> None:
    # cos([1, 0], [0.6, 0.8]) = 0.6 -> 2 - 1.2 = 0.8
    assert byol_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])).item() == pytest.approx(0.8)


def test_byol_loss_is_the_mean_over_the_batch() -> None:
    prediction = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    target = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # rows: 2 - 2 x 0.6 = 0.8 and 2 - 2 x 0 = 2 -> mean (0.8 + 2) / 2 = 1.4
    assert byol_loss(prediction, target).item() == pytest.approx(1.4)


def test_byol_loss_sends_no_gradient_into_the_target() -> None:
    prediction = torch.tensor([[1.0, 0.0]], requires_grad=True)
    target = torch.tensor([[0.6, 0.8]], requires_grad=True)
    byol_loss(prediction, target).backward()
    assert target.requires_grad and target.grad is None
    assert prediction.grad is not None
    # d/dp (2 - 2 p.t / (|p||t|)) at p = [1, 0], t = [0.6, 0.8]:
    # -2 (t / |p||t| - (p.t) p / |p|^3 |t|) = -2 ([0.6, 0.8] - 0.6 [1, 0]) = [0, -1.6]
    torch.testing.assert_close(prediction.grad, torch.tensor([[0.0, -1.6]]))


# ----------------------------------------------------------------------------- anchor_loss
def test_anchor_loss_of_orthogonal_features_is_one() -> None:
    # 1 - cos 90 degrees = 1 - 0
    assert anchor_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(1.0)


def test_anchor_loss_of_identical_features_is_zero() -> None:
    features = torch.tensor([[0.3, -0.4], [2.0, 1.0]])
    assert anchor_loss(features, features.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_anchor_loss_is_the_mean_over_the_batch() -> None:
    local = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    teacher = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    # rows: 1 - 0.6 = 0.4 and 1 - (-1) = 2 -> mean 1.2
    assert anchor_loss(local, teacher).item() == pytest.approx(1.2)


def test_anchor_loss_sends_no_gradient_to_the_teacher_side() -> None:
    local = torch.tensor([[1.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.6, 0.8]], requires_grad=True)
    anchor_loss(local, teacher).backward()
    assert teacher.grad is None
    assert local.grad is not None


# ----------------------------------------------------------------------------- proximal_term
def test_proximal_term_is_half_the_squared_distance() -> None:
    named = [("a", torch.tensor([1.0, 2.0])), ("b", torch.tensor([3.0]))]
    reference = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([1.0])}
    # 0.5 x ((1-0)^2 + (2-0)^2 + (3-1)^2) = 0.5 x (1 + 4 + 4) = 4.5
    assert proximal_term(named, reference).item() == pytest.approx(4.5)


def test_proximal_term_ignores_parameters_without_a_reference() -> None:
    named = [("a", torch.tensor([1.0, 2.0])), ("c", torch.tensor([100.0]))]
    reference = {"a": torch.tensor([0.0, 0.0])}
    # only "a": 0.5 x (1 + 4) = 2.5
    assert proximal_term(named, reference).item() == pytest.approx(2.5)


def test_proximal_term_without_any_reference_raises() -> None:
    with pytest.raises(ValueError, match="reference"):
        proximal_term([("a", torch.tensor([1.0]))], {"b": torch.tensor([0.0])})


def test_proximal_term_gradient_is_the_difference() -> None:
    weight = torch.tensor([1.0, 2.0], requires_grad=True)
    proximal_term([("a", weight)], {"a": torch.tensor([0.5, 3.0])}).backward()
    # d/dw 0.5 ||w - r||^2 = w - r = [0.5, -1]
    torch.testing.assert_close(weight.grad, torch.tensor([0.5, -1.0]))


# ----------------------------------------------------------------------------- GlobalTeacher
class _Student(nn.Module):
    """``image`` and ``text`` towers of one linear layer each, and an empty ``head``."""

    def __init__(self, distill: bool = False) -> None:
        super().__init__()
        self.image = nn.Linear(2, 2)
        self.text = nn.Linear(2, 1)
        self.head = nn.ModuleDict()
        if distill:
            holder = nn.Module()
            holder.projector = nn.Linear(2, 2)
            self.head["distill"] = holder
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.fill_(1.0)


def test_global_teacher_parameters_are_frozen_copies() -> None:
    student = _Student()
    teacher = GlobalTeacher(student, text=True)
    assert teacher.image is not student.image
    assert all(not p.requires_grad for p in teacher.image.parameters())
    assert all(not p.requires_grad for p in teacher.text.parameters())
    assert not teacher.image.training
    assert all(p.requires_grad for p in student.parameters())


def test_global_teacher_keeps_text_and_projector_only_when_present() -> None:
    teacher = GlobalTeacher(_Student())
    assert teacher.text is None and teacher.projector is None
    with_projector = GlobalTeacher(_Student(distill=True))
    assert isinstance(with_projector.projector, nn.Linear)


def test_global_teacher_does_not_follow_student_changes() -> None:
    student = _Student()
    teacher = GlobalTeacher(student)
    with torch.no_grad():
        student.image.weight.fill_(5.0)
    torch.testing.assert_close(teacher.image.weight, torch.ones(2, 2))


def test_ema_update_mixes_teacher_and_student_by_momentum() -> None:
    student = _Student(distill=True)
    teacher = GlobalTeacher(student, text=True)
    with torch.no_grad():
        student.image.weight.fill_(11.0)
        student.text.bias.fill_(-9.0)
        student.head["distill"].projector.weight.fill_(3.0)
    teacher.ema_update(student, 0.9)
    # 0.9 x 1 + 0.1 x 11 = 2.0 ; 0.9 x 1 + 0.1 x (-9) = 0.0 ; 0.9 x 1 + 0.1 x 3 = 1.2
    torch.testing.assert_close(teacher.image.weight, torch.full((2, 2), 2.0))
    torch.testing.assert_close(teacher.text.bias, torch.tensor([0.0]))
    torch.testing.assert_close(teacher.projector.weight, torch.full((2, 2), 1.2))
    # unchanged student parameters stay at 0.9 x 1 + 0.1 x 1 = 1
    torch.testing.assert_close(teacher.image.bias, torch.ones(2))


def test_ema_update_with_momentum_one_leaves_the_teacher_unchanged() -> None:
    student = _Student()
    teacher = GlobalTeacher(student)
    with torch.no_grad():
        student.image.weight.fill_(11.0)
    teacher.ema_update(student, 1.0)
    torch.testing.assert_close(teacher.image.weight, torch.ones(2, 2))


def test_ema_update_with_momentum_zero_copies_the_student() -> None:
    student = _Student()
    teacher = GlobalTeacher(student)
    with torch.no_grad():
        student.image.weight.fill_(7.0)
    teacher.ema_update(student, 0.0)
    torch.testing.assert_close(teacher.image.weight, torch.full((2, 2), 7.0))


def test_ema_update_averages_float_buffers_and_skips_integer_ones() -> None:
    student = _Student()
    student.image = nn.BatchNorm1d(2)
    teacher = GlobalTeacher(student)
    student.image(torch.tensor([[2.0, 4.0], [4.0, 8.0]]))  # one training step updates the running stats
    # running_mean = 0.9 x 0 + 0.1 x batch mean [3, 6] = [0.3, 0.6]; num_batches_tracked 0 -> 1
    teacher.ema_update(student, 0.5)
    # teacher running_mean = 0.5 x 0 + 0.5 x [0.3, 0.6] = [0.15, 0.3]
    torch.testing.assert_close(teacher.image.running_mean, torch.tensor([0.15, 0.3]))
    assert int(teacher.image.num_batches_tracked) == 0


def test_refresh_copies_the_student_weights_in_place() -> None:
    student = _Student(distill=True)
    teacher = GlobalTeacher(student, text=True)
    image_weight = teacher.image.weight
    with torch.no_grad():
        student.image.weight.fill_(4.0)
        student.text.weight.fill_(-2.0)
        student.head["distill"].projector.bias.fill_(0.5)
    teacher.refresh(student)
    assert teacher.image.weight is image_weight
    torch.testing.assert_close(teacher.image.weight, torch.full((2, 2), 4.0))
    torch.testing.assert_close(teacher.text.weight, torch.full((1, 2), -2.0))
    torch.testing.assert_close(teacher.projector.bias, torch.full((2,), 0.5))
    assert not teacher.image.weight.requires_grad
