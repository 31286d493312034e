"""TorchScript, traced: a portable file PyTorch loads without rkd-search (``torch.jit.load``)."""

from __future__ import annotations

import warnings

import torch

from ._registry import ExportFormat, ExportJob, register_format


def write(job: ExportJob) -> None:
    path = job.folder / "student.torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, still a portable format
        torch.jit.trace(job.model, torch.zeros(1, *job.input_shape)).save(str(path))
    job.files["torchscript"] = path


register_format(ExportFormat("torchscript", "TorchScript, traced", write))
