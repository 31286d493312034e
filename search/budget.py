"""Budgets and limits: one place that parses them.

A budget is compared with thop's count, which is multiply-accumulates (MACs). thop and most NAS
papers call that number "FLOPs" (MobileNet's "MAdds", Once-for-All's "600M MACs", torchvision's
GFLOPS column), so ``20MFLOPs``, ``20MMACs`` and ``20M`` all mean 20e6 MACs here. Torch's
FlopCounterMode count (2 x MACs for convolutions and linear layers) is logged beside it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import UsageError

UNIT_NOTE = "MACs as counted by thop (what thop and most NAS papers call FLOPs)"
_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?"
_PATTERN = re.compile(rf"\s*{_NUMBER}\s*([kmgt]?)\s*(flops?|macs?)?\s*", re.IGNORECASE)
_COUNT = re.compile(rf"\s*{_NUMBER}\s*([kmgt]?)\s*", re.IGNORECASE)
_BYTES = re.compile(rf"\s*{_NUMBER}\s*([kmg]?)(i?)(b?)\s*", re.IGNORECASE)
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|d)?\s*", re.IGNORECASE)
_LARGEST = 1e18  # no student counts more operations, parameters or bytes than this


@dataclass(frozen=True)
class Budget:
    macs: float
    text: str

    def __str__(self) -> str:
        return f"{format_ops(self.macs)} MACs"


def _number(number: str, exponent: str | None, scale: float, what: str, text: str, example: str) -> float:
    """mantissa x 10^exponent x scale, refused with one line when not finite, not positive or absurd."""
    try:
        value = float(number) * 10.0 ** int(exponent or 0) * scale
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or value > _LARGEST:
        raise UsageError(f"{what} {text!r} is too large: write a number below 1e18, e.g. {example}")
    if value <= 0:
        raise UsageError(f"{what} {text!r} must be positive, e.g. {example}")
    return value


def parse_budget(text: str) -> Budget:
    """Parse ``20MFLOPs``, ``20M``, ``1.5GMACs``, ``500k`` (case-insensitive) into MACs."""
    match = _PATTERN.fullmatch(text or "")
    if not match:
        raise UsageError(
            f"malformed budget {text!r}: write a number with an optional K/M/G suffix and unit, "
            "e.g. 20MFLOPs, 1.5GMACs or 500k"
        )
    number, exponent, suffix, _ = match.groups()
    return Budget(macs=_number(number, exponent, _SUFFIXES[suffix.lower()], "budget", text, "20MFLOPs"), text=text.strip())


def parse_count(text: str, what: str) -> float:
    """``100k``, ``1.2M``, ``50000``: a count such as a parameter limit."""
    match = _COUNT.fullmatch(text or "")
    if not match:
        raise UsageError(f"malformed {what} {text!r}: write a number with an optional k/M/G suffix, e.g. 100k")
    number, exponent, suffix = match.groups()
    return _number(number, exponent, _SUFFIXES[suffix.lower()], what, text, "100k")


def parse_bytes(text: str, what: str) -> float:
    """``256KB`` (1000s), ``256KiB`` (1024s), ``2MB``, ``300000``: a size in bytes."""
    match = _BYTES.fullmatch(text or "")
    if not match:
        raise UsageError(f"malformed {what} {text!r}: write bytes with an optional unit, e.g. 256KB, 256KiB or 1MB")
    number, exponent, suffix, binary, _ = match.groups()
    scale = (1024.0 if binary else 1000.0) ** " kmg".index(suffix.lower() or " ")
    if binary and not suffix:
        raise UsageError(f"malformed {what} {text!r}: write bytes with an optional unit, e.g. 256KB, 256KiB or 1MB")
    return _number(number, exponent, scale, what, text, "256KB")


def parse_duration(text: str, what: str = "--timeout") -> float:
    """``2h``, ``90m``, ``45s``, ``1.5h``, ``3600`` (seconds) into seconds."""
    match = _DURATION.fullmatch(text or "")
    if not match:
        raise UsageError(f"malformed {what} {text!r}: write a duration such as 2h, 90m or 45s")
    number, unit = match.groups()
    seconds = float(number) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[(unit or "s").lower()]
    if not 0 < seconds < 1e9:
        raise UsageError(f"{what} {text!r} must be a positive duration, e.g. 2h")
    return seconds


def parse_image_size(text: str, what: str = "--image-size") -> tuple[int, int]:
    """``64x32`` (width x height, as image tools write it) or ``32`` (square) into (height, width)."""
    parts = (text or "").lower().replace(" ", "").split("x")
    if len(parts) not in (1, 2) or not all(part.isdigit() for part in parts):
        raise UsageError(f"malformed {what} {text!r}: write WIDTHxHEIGHT in pixels, e.g. 64x32, or one number for a square")
    width, height = int(parts[0]), int(parts[-1])
    if not (4 <= width <= 4096 and 4 <= height <= 4096):
        raise UsageError(f"{what} {text!r}: each side must be between 4 and 4096 pixels")
    return height, width


def format_ops(value: float) -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def format_bytes(value: float) -> str:
    """Bytes in the units a datasheet uses: 1000-based kB and MB (``256KB``), as the flags take them."""
    for suffix, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.4g} {suffix}"
    return f"{value:.0f} B"
