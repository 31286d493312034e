"""The defaults the trainer, the search's command line and the benchmarks share, in one place."""

TEACHER = "wrn28_1"
"""The teacher trained when none is given: the graph-KD authors' WRN-28-1."""
TEACHER_EPOCHS = 30
"""Epochs of a teacher the search trains itself."""
EPOCHS = 15
"""Epochs of one student (a search trial)."""
BATCH_SIZE = 128
"""The authors' batch size; tiny datasets (digits) use ``SMALL_BATCH_SIZE``."""
SMALL_BATCH_SIZE = 32
VAL_FRACTION = 0.1
"""Share of ``train/`` held out for validation when the data has no ``val/`` split."""
