"""An export format of one module, added as a user would add one: the student's weights as a plain
state_dict file (``student.state_dict.pt``), loadable with ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import torch

from rkd_search.search.formats import ExportFormat, ExportJob, register_format


def write(job: ExportJob) -> None:
    path = job.folder / "student.state_dict.pt"
    torch.save({k: v.detach().cpu() for k, v in job.model.state_dict().items()}, path)
    job.files["state_dict"] = path
    job.summary["state_dict_tensors"] = len(job.model.state_dict())


FORMAT = ExportFormat("state_dict", "the weights as a plain state_dict (torch.load, weights_only)", write)


def register() -> ExportFormat:
    return register_format(FORMAT)
