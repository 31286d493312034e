"""Writing a file so that a crash, a full disk or a concurrent reader never sees half of it.

Every file rkd-search writes that something reads back later (checkpoints, caches, the study's
journal when repaired, exported models) goes through ``atomic_write``: the content is written to
a temporary file in the same folder, then renamed over the target, which POSIX makes atomic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(temporary)`` to fill a temporary file beside ``path``, then rename it to ``path``.

    Readers see the old file or the new one, never a torn one; if ``write`` raises, the temporary
    file is removed and ``path`` is left as it was. The folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda temporary: temporary.write_text(text))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    return atomic_write(path, lambda temporary: torch.save(obj, temporary))
