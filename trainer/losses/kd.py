"""Knowledge distillation on softened logits.

Hinton, Vinyals, Dean, "Distilling the knowledge in a neural network", NIPS 2014 workshop
(arXiv:1503.02531): L_KD = T^2 KL(softmax(z_T / T) || softmax(z_S / T)), batch mean. The T^2
factor keeps the gradient scale independent of T; at T = 4 this is the "weight 16" of RepDistiller
and graph_kd.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ._registry import LossTerm, register_loss


def hinton_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


def teacher_kl(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Predictive KL(p_teacher || p_student) at T = 1, batch mean (Stanton et al., NeurIPS 2021)."""
    return hinton_kd_loss(student_logits, teacher_logits, temperature=1.0)


register_loss(LossTerm("kd", "kd_weight", lambda config, batch: hinton_kd_loss(batch.logits, batch.teacher_logits, config.temperature),
                       summary="Hinton KD on the logits at loss.temperature, T^2-scaled (Hinton et al. 2014)"))
