"""The training loop: one student, one loss mix, SGD, a report after every epoch.

Reads top to bottom: build the student, count its operations, train epoch by epoch on the
deterministic batches, evaluate on the validation split, report (the callback may stop the run),
and finish with test accuracy and the teacher-fidelity metrics of Stanton et al. (NeurIPS 2021).

A run can pause after any epoch (``until=r``) and continue later (``resume=state``): the
learning-rate schedule is defined over ``config.epochs`` and the batches by (seed, epoch), so the
continued run equals an uninterrupted one. The step keeps its bookkeeping on the device (no
host round trip per batch); losses, weights and logits are checked for NaN/inf once per epoch, so
a diverged student fails instead of being reported at chance accuracy.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import torch
from torch import Tensor, nn

from ._device import autocast, resolve_device, resolve_precision, use_channels_last
from .config import TrainConfig
from .results import EpochReport, TrainResult, TrainState
from .batches import eval_batches, num_train_batches, train_batches
from .data import ImageDataset
from .metrics import accuracy
from .losses import teacher_kl
from .models import build_model
from .ops import count_spec_ops
from .step import compile_cache_for, compiles, step_loss
from .targets import LiveTeacher, TeacherSignals, TeacherTargets

log = logging.getLogger(__name__)

Report = Callable[[EpochReport], "bool | None"]


def learning_rate_factor(schedule: str, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1) of the run.

    "step" is the authors' recipe scaled to the run's length (x0.2 at 30%, 60%, 80%: epochs
    60/120/160 of 200); "cosine" anneals to zero, which suits short search trials better.
    """
    if schedule == "step":
        return 0.2 ** sum(progress >= m for m in (0.3, 0.6, 0.8))
    return 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def predict(model: nn.Module, data: ImageDataset, images: Tensor, labels: Tensor, precision: str, device: torch.device,
            channels_last: bool = False) -> Tensor:
    model.eval()
    outputs = []
    for x, _ in eval_batches(data, images, labels):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            outputs.append(model(x).float())
    return torch.cat(outputs)


def _all_finite(tensors) -> bool:
    """One device-to-host read for a whole collection of tensors."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def fit(
    config: TrainConfig,
    data: ImageDataset,
    *,
    teacher: nn.Module | TeacherTargets | TeacherSignals | None = None,
    report: Report | None = None,
    device: str | torch.device | None = None,
    resume: TrainState | None = None,
    until: int | None = None,
    batch_progress: Callable[[int, int], None] | None = None,
    checkpoint: Callable[[TrainState], None] | None = None,
) -> TrainResult:
    """Train ``config.student`` on ``data`` with the loss mix of ``config.loss``.

    ``teacher`` is a frozen model (run live on every batch) or precomputed ``TeacherTargets``
    (the fast path of a search); it is required when the loss reads the teacher and optional
    otherwise (it then only provides the fidelity metrics). After each epoch ``report`` receives
    an ``EpochReport``; returning True stops training (pruning) and the result says so.

    ``until`` pauses after that many epochs of ``config.epochs``: the result then has no test
    metrics and carries ``state``, which ``resume`` continues from. ``batch_progress(done, total)``
    is called after every training step (a progress bar within long epochs). ``checkpoint(state)``
    receives, after every epoch, the ``TrainState`` that ``resume`` continues from (a long run saves
    it, so that a killed process loses at most one epoch). A resumed state that already holds every
    epoch is evaluated without training. Data without validation images (a final training on
    train and val together) reports a validation accuracy of NaN. Raises ``FloatingPointError``
    when the loss, the weights or the evaluation logits stop being finite.
    """
    device = resolve_device(device)
    precision = resolve_precision(config.precision, device)
    spec = config.student.with_data(data.input_shape[0], data.num_classes)
    data = data if data.train_images.device == device else data.to(device)
    start_epoch = resume.epoch if resume is not None else 0
    until = config.epochs if until is None else until
    if not (start_epoch < until <= config.epochs or start_epoch == until == config.epochs):
        raise ValueError(f"cannot train from epoch {start_epoch} to epoch {until} of {config.epochs}")

    signals = _teacher_signals(teacher, config, data, device, precision)

    torch.manual_seed(config.seed)
    student = build_model(spec).to(device)
    ops = count_spec_ops(spec, data.resolution)
    channels_last = use_channels_last(student, device, data.input_shape)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    compiled = compiles(config.compile, device)
    if compiled:
        compile_cache_for((spec, config.loss, precision, device.type))
    train_step = step_loss(student, config.loss, precision, device, compiled=compiled)
    optimizer = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    history: list[EpochReport] = []
    previous_seconds = 0.0
    if resume is not None:
        student.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        history, previous_seconds = list(resume.history), resume.train_seconds
    steps_per_epoch = num_train_batches(data, min(config.batch_size, len(data.train_labels)))
    total_steps = steps_per_epoch * config.epochs
    stages = config.loss.relational_stages

    started = time.perf_counter()
    stopped_early = False
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, until):
        epoch_start = time.perf_counter()
        student.train()
        sums: dict[str, Tensor] = {}
        total_loss = torch.zeros((), device=device)
        for index, (images, labels) in enumerate(train_batches(data, config.batch_size, config.seed, epoch)):
            lr = config.lr * learning_rate_factor(config.schedule, step / total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            teacher_logits, teacher_grams = None, {}
            if config.loss.needs_teacher:
                teacher_logits, teacher_grams = signals.batch(epoch, index, images, stages)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            step_started = time.perf_counter()
            loss, parts = train_step(images, labels, teacher_logits, teacher_grams)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if train_step.compiled:
                train_step.step_seconds.append(time.perf_counter() - step_started)
            step += 1
            total_loss += loss.detach()
            for name, value in parts.items():
                sums[name] = sums[name] + value if name in sums else value
            if batch_progress is not None:
                batch_progress(index + 1, steps_per_epoch)
        epoch_values = torch.stack([total_loss, *sums.values()]).div(steps_per_epoch).tolist()  # one read per epoch
        eval_start = time.perf_counter()
        val_acc = _checked_validation(student, data, epoch_values[0], epoch + 1, precision, device, channels_last)
        epoch_report = EpochReport(
            epoch=epoch + 1,
            epochs=config.epochs,
            val_acc=val_acc,
            train_loss=epoch_values[0],
            loss_parts=dict(zip(sums, epoch_values[1:])),
            lr=lr,
            seconds=time.perf_counter() - epoch_start,
            eval_seconds=time.perf_counter() - eval_start,
        )
        history.append(epoch_report)
        if checkpoint is not None:
            checkpoint(TrainState(epoch + 1, _to_cpu(student.state_dict()), _to_cpu(optimizer.state_dict()), list(history),
                                  previous_seconds + time.perf_counter() - started))
        if report is not None and report(epoch_report) and epoch + 1 < config.epochs:
            stopped_early = True
            break
    train_seconds = previous_seconds + time.perf_counter() - started

    weights = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
    common = dict(compile_seconds=train_step.compile_seconds, compile_fallback=train_step.fallback, spec=spec, val_acc=history[-1].val_acc,
                  macs=ops.macs, flops=ops.flops, params=ops.params,
                  train_seconds=train_seconds, epochs_done=len(history), epochs_planned=config.epochs,
                  stopped_early=stopped_early, input_shape=data.input_shape, history=history, state_dict=weights)
    if len(history) < config.epochs and not stopped_early:  # paused: continue later from ``state``
        optimizer_state = _to_cpu(optimizer.state_dict())
        state = TrainState(len(history), weights, optimizer_state, list(history), train_seconds)
        return TrainResult(test_acc=None, teacher_agreement=None, teacher_kl=None, state=state, paused=True, **common)

    test_acc, agreement, kl = _test_metrics(student, data, signals, precision, device, channels_last)
    return TrainResult(test_acc=test_acc, teacher_agreement=agreement, teacher_kl=kl, **common)


def _teacher_signals(teacher, config: TrainConfig, data: ImageDataset, device: torch.device, precision: str) -> TeacherSignals | None:
    """What the loss reads of the teacher: a model run live, or its cached targets (checked against this run)."""
    if teacher is not None and not isinstance(teacher, nn.Module) and not hasattr(teacher, "batch"):
        raise TypeError(f"teacher must be a model (nn.Module) or TeacherTargets, got {type(teacher).__name__} {teacher!r}; "
                        "for an architecture name, train or load it first: prepare_teacher(name, data).model")
    signals = LiveTeacher(teacher, config.precision, device, data.input_shape) if isinstance(teacher, nn.Module) else teacher
    if isinstance(signals, TeacherTargets):
        signals.check_compatible(data, config.batch_size, config.seed, config.epochs, precision)
    if config.loss.needs_teacher and signals is None:
        raise ValueError("this loss mix distils from a teacher: pass teacher= (a model or TeacherTargets)")
    return signals


def _checked_validation(student: nn.Module, data: ImageDataset, train_loss: float, epoch: int, precision: str,
                        device: torch.device, channels_last: bool) -> float:
    """The epoch's validation accuracy (NaN without validation images), once its loss, weights and
    logits are checked finite: a diverged student fails instead of being reported at chance."""
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"the loss became {train_loss} in epoch {epoch}; lower the learning rate or loss weights")
    if not _all_finite(student.state_dict().values()):
        raise FloatingPointError(f"the weights stopped being finite in epoch {epoch}; lower the learning rate or loss weights")
    if not len(data.val_labels):
        return math.nan
    val_logits = predict(student, data, data.val_images, data.val_labels, precision, device, channels_last)
    if not _all_finite([val_logits]):
        raise FloatingPointError(f"the validation logits stopped being finite in epoch {epoch}; lower the learning rate")
    return accuracy(val_logits, data.val_labels)


def _test_metrics(student: nn.Module, data: ImageDataset, signals: TeacherSignals | None, precision: str, device: torch.device,
                  channels_last: bool) -> tuple[float, float | None, float | None]:
    """Test accuracy, and the teacher fidelity of Stanton et al. (agreement, predictive KL) when there is a teacher."""
    test_logits = predict(student, data, data.test_images, data.test_labels, precision, device, channels_last)
    if not _all_finite([test_logits]):
        raise FloatingPointError("the test logits are not finite; lower the learning rate")
    if signals is None:
        return accuracy(test_logits, data.test_labels), None, None
    reference = signals.test_logits(data).to(device)
    return (accuracy(test_logits, data.test_labels), accuracy(test_logits, reference.argmax(1)),
            float(teacher_kl(reference, test_logits)))


def _to_cpu(value):
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
