"""The training loop: one student, one loss mix, SGD, a report after every epoch.

Reads top to bottom: build the student, count its operations, train epoch by epoch on the
deterministic batches, evaluate on the validation split, report (the callback may stop the run),
and finish with test accuracy and the teacher-fidelity metrics of Stanton et al. (NeurIPS 2021).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._device import autocast, resolve_device, resolve_precision, use_channels_last
from .config import EpochReport, LossConfig, TrainConfig, TrainResult
from .data import ImageDataset, eval_batches, num_train_batches, train_batches
from .losses import gram_matrix, graph_rkd_loss, hinton_kd_loss, rkd_angle_loss, rkd_distance_loss, teacher_kl
from .models import build_model
from .ops import count_spec_ops
from .targets import LiveTeacher, TeacherSignals, TeacherTargets

Report = Callable[[EpochReport], "bool | None"]


def learning_rate_factor(schedule: str, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1) of the run.

    "step" is the authors' recipe scaled to the run's length (x0.2 at 30%, 60%, 80%: epochs
    60/120/160 of 200); "cosine" anneals to zero, which suits short search trials better.
    """
    if schedule == "step":
        return 0.2 ** sum(progress >= m for m in (0.3, 0.6, 0.8))
    return 0.5 * (1 + math.cos(math.pi * progress))


def distillation_loss(
    loss: LossConfig,
    logits: Tensor,
    labels: Tensor,
    features: list[Tensor],
    teacher_logits: Tensor | None,
    teacher_grams: dict[int, Tensor],
) -> tuple[Tensor, dict[str, float]]:
    """The weighted loss mix of ``loss`` and its parts (unweighted, for logging)."""
    parts: dict[str, Tensor] = {"ce": F.cross_entropy(logits.float(), labels)}
    if loss.kd_weight > 0:
        parts["kd"] = hinton_kd_loss(logits, teacher_logits, loss.temperature)
    student_grams = {stage: gram_matrix(features[stage - 1]) for stage in loss.relational_stages}
    if loss.graph_weight > 0:
        parts["graph"] = graph_rkd_loss(
            [student_grams[s] for s in loss.layers],
            [teacher_grams[s] for s in loss.layers],
            similarity=loss.similarity,
            k=loss.k,
            bandwidth=loss.bandwidth,
            power=loss.power,
            layer_weights=loss.layer_weights,
            reduction=loss.reduction,
        )
    for name, function, weight in (
        ("rkd_distance", rkd_distance_loss, loss.rkd_distance_weight),
        ("rkd_angle", rkd_angle_loss, loss.rkd_angle_weight),
    ):
        if weight > 0:
            terms = [function(student_grams[s], teacher_grams[s]) for s in loss.rkd_layers]
            parts[name] = torch.stack(terms).mean()
    weights = {
        "ce": loss.ce_weight,
        "kd": loss.kd_weight,
        "graph": loss.graph_weight,
        "rkd_distance": loss.rkd_distance_weight,
        "rkd_angle": loss.rkd_angle_weight,
    }
    total = sum(weights[name] * value for name, value in parts.items())
    return total, {name: float(value.detach()) for name, value in parts.items()}


@torch.no_grad()
def predict(model: nn.Module, data: ImageDataset, images: Tensor, labels: Tensor, precision: str, device: torch.device) -> Tensor:
    model.eval()
    outputs = []
    for x, _ in eval_batches(data, images, labels):
        if use_channels_last(device):
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            outputs.append(model(x).float())
    return torch.cat(outputs)


def fit(
    config: TrainConfig,
    data: ImageDataset,
    *,
    teacher: nn.Module | TeacherTargets | TeacherSignals | None = None,
    report: Report | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train ``config.student`` on ``data`` with the loss mix of ``config.loss``.

    ``teacher`` is a frozen model (run live on every batch) or precomputed ``TeacherTargets``
    (the fast path of a search); it is required when the loss reads the teacher and optional
    otherwise (it then only provides the fidelity metrics). After each epoch ``report`` receives
    an ``EpochReport``; returning True stops training (pruning) and the result says so.
    """
    device = resolve_device(device)
    precision = resolve_precision(config.precision, device)
    channels_last = use_channels_last(device)
    spec = config.student.with_data(data.input_shape[0], data.num_classes)
    data = data if data.train_images.device == device else data.to(device)

    signals: TeacherSignals | None
    if isinstance(teacher, nn.Module):
        signals = LiveTeacher(teacher, config.precision, device)
    else:
        signals = teacher
    if isinstance(signals, TeacherTargets):
        signals.check_compatible(data, config.batch_size, config.seed, config.epochs)
    if config.loss.needs_teacher and signals is None:
        raise ValueError("this loss mix distils from a teacher: pass teacher= (a model or TeacherTargets)")

    torch.manual_seed(config.seed)
    student = build_model(spec).to(device)
    ops = count_spec_ops(spec, data.resolution)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        student.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    steps_per_epoch = num_train_batches(data, min(config.batch_size, len(data.train_labels)))
    total_steps = steps_per_epoch * config.epochs
    stages = config.loss.relational_stages

    history: list[EpochReport] = []
    started = time.perf_counter()
    stopped_early = False
    step = 0
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        student.train()
        sums: dict[str, float] = {}
        total_loss = 0.0
        for index, (images, labels) in enumerate(train_batches(data, config.batch_size, config.seed, epoch)):
            lr = config.lr * learning_rate_factor(config.schedule, step / total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            teacher_logits, teacher_grams = None, {}
            if config.loss.needs_teacher:
                teacher_logits, teacher_grams = signals.batch(epoch, index, images, stages)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(precision, device):
                logits, features = student.forward_with_features(images)
            loss, parts = distillation_loss(config.loss, logits, labels, features, teacher_logits, teacher_grams)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch + 1}; lower the learning rate or loss weights")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total_loss += float(loss.detach())
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value
        val_logits = predict(student, data, data.val_images, data.val_labels, precision, device)
        val_acc = float((val_logits.argmax(1) == data.val_labels).float().mean())
        epoch_report = EpochReport(
            epoch=epoch + 1,
            epochs=config.epochs,
            val_acc=val_acc,
            train_loss=total_loss / steps_per_epoch,
            loss_parts={name: value / steps_per_epoch for name, value in sums.items()},
            lr=lr,
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(epoch_report)
        if report is not None and report(epoch_report) and epoch + 1 < config.epochs:
            stopped_early = True
            break
    train_seconds = time.perf_counter() - started

    test_logits = predict(student, data, data.test_images, data.test_labels, precision, device)
    test_acc = float((test_logits.argmax(1) == data.test_labels).float().mean())
    agreement = kl = None
    if signals is not None:
        reference = signals.test_logits(data).to(device)
        agreement = float((reference.argmax(1) == test_logits.argmax(1)).float().mean())
        kl = float(teacher_kl(reference, test_logits))
    return TrainResult(
        spec=spec,
        val_acc=history[-1].val_acc,
        test_acc=test_acc,
        teacher_agreement=agreement,
        teacher_kl=kl,
        macs=ops.macs,
        flops=ops.flops,
        params=ops.params,
        train_seconds=train_seconds,
        epochs_done=len(history),
        epochs_planned=config.epochs,
        stopped_early=stopped_early,
        input_shape=data.input_shape,
        history=history,
        state_dict={k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
    )
