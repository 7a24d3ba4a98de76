"""File-system helpers shared by every atomic save (models, pipelines, modular pipelines, configs).

Saves are staged in ``tempfile.mkdtemp``/``mkstemp`` entries, which are private (0700/0600); these helpers give
the saved tree the modes a plain ``mkdir``/``open`` would have under the current umask.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_file_permissions(path: str) -> None:
    """Give one file the mode ``open()`` would create it with."""
    os.chmod(path, 0o666 & ~current_umask())


def normal_tree_permissions(root: str) -> None:
    """Give every folder and file under ``root`` (included) the modes ``mkdir``/``open`` would give them."""
    mask = current_umask()
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success give it ``open()``'s mode and move it to ``path``,
    on any error remove it (so ``path`` is never left half-written)."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        yield tmp
        normal_file_permissions(tmp)  # mkstemp creates it 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
