"""The exceptions the CLI turns into one line: bad input (exit 2) and a search that failed (exit 1)."""

import errno

UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EISDIR}
"""What a full, read-only or failing disk raises when a file is written."""


class UsageError(Exception):
    """Bad input the user can fix; the message says what was wrong and what to do. Exit code 2."""


class SearchError(Exception):
    """The input was fine but the search could not do its work (every trial failed, Ray stopped, ...).

    The message says why and where to look. Exit code 1.
    """


def cannot_write(error: BaseException) -> str | None:
    """What a disk that cannot be written (full, read-only, failing) says, in a few words; None for other errors."""
    if isinstance(error, OSError) and error.errno in UNWRITABLE:
        return f"cannot write {error.filename or 'a file'} ({error.strerror})"
    for marker in ("database or disk is full", "attempt to write a readonly database", "disk I/O error"):
        if marker in str(error):
            return f"cannot write the MLflow store ({marker})"
    return None
