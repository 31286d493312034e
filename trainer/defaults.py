"""The defaults the trainer, the search's command line and the benchmarks share, in one place."""

TEACHER = "wrn28_1"
"""The teacher trained when none is given: the graph-KD authors' WRN-28-1."""
TEACHER_EPOCHS = 30
"""Epochs of a teacher the search trains itself."""
EPOCHS = 15
"""Epochs of one student (a search trial)."""
FINAL_EPOCHS = 200
"""Epochs of ``rkd-search train``, the picked student's final training (published CIFAR models train 200)."""
KD_TEMPERATURE = 4.0
"""Hinton KD's softmax temperature when none is chosen."""
BATCH_SIZE = 128
"""The authors' batch size; tiny datasets (digits) use ``SMALL_BATCH_SIZE``."""
SMALL_BATCH_SIZE = 32
VAL_FRACTION = 0.1
"""Share of ``train/`` held out for validation when the data has no ``val/`` split."""
