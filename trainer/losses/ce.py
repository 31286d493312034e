"""Cross-entropy with the labels: the term every mix keeps (its ``ce`` part is always reported)."""

from __future__ import annotations

import torch.nn.functional as F

from ._registry import LossTerm, register_loss

register_loss(LossTerm("ce", "ce_weight", lambda config, batch: F.cross_entropy(batch.logits.float(), batch.labels),
                       teacher=False, always=True, summary="cross-entropy with the labels"))
