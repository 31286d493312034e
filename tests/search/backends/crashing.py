"""Test-only training functions that die natively, for the worker-process tests (a worker imports
them by ``module:function``, as it imports the real ``train_student``)."""

from __future__ import annotations

import ctypes
import os

from rkd_search.search.objective import train_student


ABORTED = "first-trial-aborted"
"""The file, in the working folder, that says the first trial was aborted."""


def abort_the_first_trial(config, data, targets, report=None, device=None, resume=None, until=None):
    """``os.abort()`` (SIGABRT, as "double free or corruption" ends) for the search's first trial
    (its first enqueued student), else train."""
    if not os.path.exists(ABORTED):
        open(ABORTED, "x").close()
        os.abort()
    return train_student(config, data, targets, report, device, resume=resume, until=until)


def segfault_on_wide_students(config, data, targets, report=None, device=None, resume=None, until=None):
    """A segmentation fault (a read at address 0) for students wider than 1, else train."""
    if config.student.width > 1:
        ctypes.string_at(0)
    return train_student(config, data, targets, report, device, resume=resume, until=until)
