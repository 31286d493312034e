"""What the benchmarks share: their data, teacher, cache, work-folder, docs and results flags, with
the defaults of the package (``rkd_search.trainer.defaults``: the teacher's epochs, a trial's)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rkd_search.trainer import defaults

SUBSET = "../shared/data/cifar10-small"


def add_common_flags(parser: argparse.ArgumentParser, work: str, results: Path | None = None, data: bool = True,
                     report_only: bool = True) -> None:
    """--data-dir, --teacher-epochs, --cache-dir, --work, --doc and, for benchmarks that keep their runs,
    --results and --report-only."""
    if data:
        parser.add_argument("--data-dir", default=os.environ.get("RKD_DATA_DIR", SUBSET),
                            help=f"an ImageFolder tree (env RKD_DATA_DIR, default {SUBSET})")
    parser.add_argument("--teacher-epochs", type=int, default=defaults.TEACHER_EPOCHS,
                        help=f"the WRN-28-1 teacher's epochs (default {defaults.TEACHER_EPOCHS}, the search's)")
    parser.add_argument("--cache-dir", default=os.environ.get("RKD_CACHE_DIR"), help="env RKD_CACHE_DIR")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("RKD_BENCH_WORK", work)),
                        help=f"where the runs go (env RKD_BENCH_WORK, default {work})")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    if results is not None:
        parser.add_argument("--results", type=Path, default=results)
    if report_only:
        parser.add_argument("--report-only", action="store_true", help="rewrite the docs section from the results file")
