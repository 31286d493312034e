"""The terms of the loss mix, one registry: each loss module registers its term, and the trainer's
``LossConfig``, the loss mix, the search-space schema and the command line read it.

A term is what one module of ``trainer/losses`` adds to the mix: its name (the key of the epoch's
``loss_parts`` and of the ``epoch.loss.NAME`` metrics), the key its weight is set by (a field of
``LossConfig`` for the built-in terms, ``loss.KEY`` in a space file), whether it reads the
teacher, the stages whose Gram matrices it reads, and how it is computed from a batch's
``LossInputs``. A new loss is one module that calls ``register_loss`` (its weight then lives in
``LossConfig.weights``) plus its test; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor


@dataclass(frozen=True)
class LossInputs:
    """What a term may read of a batch: the student's logits, the labels, the teacher's logits, and
    per stage the student's and the teacher's Gram matrices (the stages the weighted terms read)."""

    logits: Tensor
    labels: Tensor
    teacher_logits: Tensor | None
    student_grams: dict[int, Tensor]
    teacher_grams: dict[int, Tensor]


def _no_stages(config: Any) -> tuple[int, ...]:
    return ()


@dataclass(frozen=True)
class LossTerm:
    name: str
    weight: str
    """The key of its weight: a ``LossConfig`` field (``kd_weight``), or a key of ``LossConfig.weights``."""
    compute: Callable[[Any, LossInputs], Tensor]
    """(the ``LossConfig``, the batch) -> the term, unweighted."""
    teacher: bool = True
    """Reads the teacher (its logits or its Gram matrices)."""
    stages: Callable[[Any], tuple[int, ...]] = _no_stages
    """The stages whose Gram matrices it reads, under a ``LossConfig``."""
    always: bool = False
    """Computed and reported even at weight 0 (cross-entropy: the epoch's ``ce`` part is always logged)."""
    summary: str = ""
    """One line for ``--help``: what it is, after which paper."""


TERMS: dict[str, LossTerm] = {}


def register_loss(term: LossTerm) -> LossTerm:
    """Add ``term`` to the mix (after the terms registered before it); a name used twice is refused."""
    if term.name in TERMS and TERMS[term.name] != term:
        raise ValueError(f"a loss term named {term.name!r} is registered already")
    TERMS[term.name] = term
    return term


def unregister_loss(name: str) -> None:
    TERMS.pop(name, None)


def loss_terms() -> list[LossTerm]:
    """Every registered term, in the order of the mix."""
    return list(TERMS.values())


def describe_losses() -> str:
    """The terms as ``--help`` lists them: their weight keys and what they are."""
    return "; ".join(f"{term.weight}: {term.summary or term.name}" for term in loss_terms())
