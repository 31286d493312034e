"""A newcomer's distillation loop, written from the PyTorch tutorials: what ``fit`` is compared with.

Nothing of rkd-search's training code: the data pipeline is the "Training a classifier" tutorial's
(a ``Dataset`` applying torchvision's per-image transforms, a shuffling ``DataLoader``), the teacher
runs live on every batch under ``no_grad`` as in the knowledge-distillation tutorial, the loss
(cross-entropy, Hinton KD, the cosine graph-RKD loss) and the cosine schedule are written out below,
and the optimiser is plain SGD. Only the networks come from rkd-search (``build_model`` and
``forward_with_features``, the features each stage ends with).

The math is ``fit``'s for the mixes the benchmarks use (CE + KD + dense cosine graph-RKD, "sum"
reduction); ``newcomer_loss`` is checked against ``fit``'s loss on a batch before anything is timed
(``check_same_math``). The batches are not ``fit``'s (its own shuffling and augmentation draws), so
the trained weights differ; the cost of a step does not.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from rkd_search.trainer import build_model


class _Images(Dataset):
    """uint8 (N, C, H, W) images in memory, transformed one at a time as a torchvision dataset is."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(self.images[index]), self.labels[index]


def _graph(features):
    """Normalised cosine-similarity graph of a batch: A = D^-1/2 W D^-1/2, W_ii = 0."""
    x = F.normalize(features.flatten(1).float(), dim=1)
    w = x @ x.T
    w = w - torch.diag(torch.diag(w))
    degree = w.sum(1)
    scale = torch.where(degree > 1e-8, degree.clamp_min(1e-8).rsqrt(), torch.zeros_like(degree))
    return scale[:, None] * w * scale[None, :]


def newcomer_loss(loss_config, logits, labels, features, teacher_logits, teacher_features):
    """CE + kd_weight * T^2 KL(teacher || student at T) + graph_weight * mean over layers of ||A_T - A_S||^2."""
    loss = loss_config.ce_weight * F.cross_entropy(logits.float(), labels)
    if loss_config.kd_weight > 0:
        t = loss_config.temperature
        kl = F.kl_div(F.log_softmax(logits.float() / t, 1), F.log_softmax(teacher_logits.float() / t, 1),
                      reduction="batchmean", log_target=True)
        loss = loss + loss_config.kd_weight * t * t * kl
    if loss_config.graph_weight > 0:
        layers = loss_config.layers
        graph = sum(((_graph(teacher_features[s - 1]) - _graph(features[s - 1])) ** 2).sum() for s in layers)
        loss = loss + loss_config.graph_weight * graph / len(layers)
    return loss


def _check_supported(loss_config) -> None:
    unsupported = (loss_config.similarity != "cosine" or loss_config.k is not None or loss_config.power != 1
                   or loss_config.layer_weights is not None or loss_config.reduction != "sum"
                   or loss_config.rkd_distance_weight > 0 or loss_config.rkd_angle_weight > 0)
    if unsupported:
        raise ValueError("the newcomer's loop writes out CE, KD and the dense cosine graph-RKD loss ('sum') only")


def check_same_math(config, data, teacher, tolerance: float = 1e-4) -> float:
    """``newcomer_loss`` against ``fit``'s loss mix on one batch; raises when they differ."""
    from rkd_search.trainer.batches import train_batches
    from rkd_search.trainer.step import distillation_loss
    from rkd_search.trainer.losses import gram_matrix

    _check_supported(config.loss)
    torch.manual_seed(config.seed)
    student = build_model(config.student.with_data(data.input_shape[0], data.num_classes)).eval()
    teacher = teacher.eval()
    images, labels = next(train_batches(data, config.batch_size, config.seed, 0))
    with torch.no_grad():
        logits, features = student.forward_with_features(images)
        teacher_logits, teacher_features = teacher.forward_with_features(images)
        grams = {s: gram_matrix(teacher_features[s - 1]) for s in config.loss.relational_stages}
        ours, _ = distillation_loss(config.loss, logits, labels, features, teacher_logits, grams)
        theirs = newcomer_loss(config.loss, logits, labels, features, teacher_logits, teacher_features)
    difference = abs(float(ours) - float(theirs))
    if difference > tolerance * max(1.0, abs(float(ours))):
        raise AssertionError(f"the newcomer's loss {float(theirs):.6f} differs from fit's {float(ours):.6f}")
    return difference


def bare_loop(config, data, teacher: nn.Module, device=None, num_workers: int = 0) -> list[float]:
    """Train ``config.student`` distilling from ``teacher`` (run live); each epoch's training seconds.

    Cosine schedule; bf16 autocast (the AMP tutorial's) where ``fit`` would use it: on CUDA unless
    ``config.precision`` is fp32."""
    _check_supported(config.loss)
    if config.schedule != "cosine":
        raise ValueError("the newcomer's loop writes out the cosine schedule only")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    size = data.resolution
    transform = v2.Compose([
        v2.RandomCrop(size, padding=data.augmentation.crop_padding),
        v2.RandomHorizontalFlip(0.5 if data.augmentation.flip else 0.0),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(data.mean, data.std),
    ])
    loader = DataLoader(_Images(data.train_images.cpu(), data.train_labels.cpu(), transform), batch_size=config.batch_size,
                        shuffle=True, drop_last=True, num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=num_workers > 0)
    torch.manual_seed(config.seed)
    student = build_model(config.student.with_data(data.input_shape[0], data.num_classes)).to(device)
    teacher = teacher.to(device).eval()
    optimizer = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    total_steps, step = len(loader) * config.epochs, 0
    seconds = []
    for _ in range(config.epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        student.train()
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                with torch.no_grad():
                    teacher_logits, teacher_features = teacher.forward_with_features(images)
                logits, features = student.forward_with_features(images)
            loss = newcomer_loss(config.loss, logits, labels, features, teacher_logits, teacher_features)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds
