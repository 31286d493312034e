"""A bare PyTorch loop: the student, batches and loss ``fit`` trains with, without its bookkeeping.

What a hand-written loop costs, on any device: the benchmarks compare ``fit`` with it.
"""

from __future__ import annotations

import time

import torch

from rkd_search.trainer import build_model
from rkd_search.trainer._device import autocast, resolve_device, resolve_precision, use_channels_last
from rkd_search.trainer.data import train_batches
from rkd_search.trainer.loop import distillation_loss, learning_rate_factor


def bare_loop(config, data, targets, device=None) -> list[float]:
    """Train ``config.student`` with ``targets`` and return each epoch's training seconds."""
    device = resolve_device(device)
    precision = resolve_precision(config.precision, device)
    data = data.to(device)
    torch.manual_seed(config.seed)
    student = build_model(config.student.with_data(data.input_shape[0], data.num_classes)).to(device)
    channels_last = use_channels_last(device)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    steps = len(data.train_labels) // config.batch_size
    seconds, step = [], 0
    for epoch in range(config.epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        student.train()
        for index, (images, labels) in enumerate(train_batches(data, config.batch_size, config.seed, epoch)):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * learning_rate_factor(config.schedule, step / (steps * config.epochs))
            teacher_logits, grams = targets.batch(epoch, index, images, config.loss.relational_stages)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(precision, device):
                logits, features = student.forward_with_features(images)
            loss, _ = distillation_loss(config.loss, logits, labels, features, teacher_logits, grams)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds
