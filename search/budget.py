"""Operations budgets: one place that parses them.

A budget is compared with thop's count, which is multiply-accumulates (MACs). thop and most NAS
papers call that number "FLOPs" (MobileNet's "MAdds", Once-for-All's "600M MACs", torchvision's
GFLOPS column), so ``20MFLOPs``, ``20MMACs`` and ``20M`` all mean 20e6 MACs here. Torch's
FlopCounterMode count (2 x MACs for convolutions and linear layers) is logged beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError

UNIT_NOTE = "MACs as counted by thop (what thop and most NAS papers call FLOPs)"
_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*([kmgt]?)\s*(flops?|macs?)?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    macs: float
    text: str

    def __str__(self) -> str:
        return f"{format_ops(self.macs)} MACs"


def parse_budget(text: str) -> Budget:
    """Parse ``20MFLOPs``, ``20M``, ``1.5GMACs``, ``500k`` (case-insensitive) into MACs."""
    match = _PATTERN.fullmatch(text or "")
    if not match:
        raise UsageError(
            f"malformed budget {text!r}: write a number with an optional K/M/G suffix and unit, "
            "e.g. 20MFLOPs, 1.5GMACs or 500k"
        )
    number, exponent, suffix, _ = match.groups()
    macs = float(number) * 10 ** int(exponent or 0) * _SUFFIXES[suffix.lower()]
    if macs <= 0:
        raise UsageError(f"budget {text!r} must be positive, e.g. 20MFLOPs")
    return Budget(macs=macs, text=text.strip())


def format_ops(value: float) -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"
