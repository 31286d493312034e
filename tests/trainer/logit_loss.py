"""A loss term of one module, added as a user would add one: the mean squared difference between
the student's and the teacher's logits (Ba and Caruana, NIPS 2014), weight ``logit_l2_weight``."""

from __future__ import annotations

import torch.nn.functional as F

from rkd_search.trainer.losses import LossTerm, register_loss

TERM = LossTerm("logit_l2", "logit_l2_weight", lambda config, batch: F.mse_loss(batch.logits.float(), batch.teacher_logits.float()),
                summary="mean squared logit difference (Ba and Caruana 2014)")


def register() -> LossTerm:
    return register_loss(TERM)
