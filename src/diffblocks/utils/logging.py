"""diffusers-style logging helpers: ``get_logger``, ``set_verbosity_*``, progress-bar switches.

Scripts written for diffusers do ``from diffusers.utils import logging; logging.set_verbosity_error()``; the
same works with ``diffblocks.utils``. Verbosity applies to the ``"diffblocks"`` logger tree.
"""
from __future__ import annotations

import logging as _logging
import os
from typing import Optional

CRITICAL = _logging.CRITICAL
FATAL = _logging.FATAL
ERROR = _logging.ERROR
WARNING = _logging.WARNING
WARN = _logging.WARNING
INFO = _logging.INFO
DEBUG = _logging.DEBUG
NOTSET = _logging.NOTSET

_LIBRARY = "diffblocks"
_LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR, "critical": CRITICAL}
_progress_bars_enabled = os.environ.get("DIFFBLOCKS_DISABLE_PROGRESS_BARS", "").lower() not in ("1", "true", "yes")


def _library_logger() -> _logging.Logger:
    return _logging.getLogger(_LIBRARY)


def get_logger(name: Optional[str] = None) -> _logging.Logger:
    """The logger ``name`` (the library's root logger ``"diffblocks"`` when None)."""
    return _logging.getLogger(name or _LIBRARY)


def get_verbosity() -> int:
    """Effective level of the ``"diffblocks"`` logger."""
    return _library_logger().getEffectiveLevel()


def set_verbosity(verbosity: int) -> None:
    """Set the level of every ``diffblocks.*`` logger (e.g. ``logging.ERROR``)."""
    if isinstance(verbosity, str):
        if verbosity.lower() not in _LEVELS:
            raise ValueError(f"`verbosity` must be one of {sorted(_LEVELS)} or a logging level int, got {verbosity!r}")
        verbosity = _LEVELS[verbosity.lower()]
    if not isinstance(verbosity, int) or isinstance(verbosity, bool):
        raise TypeError(f"`verbosity` must be a logging level int such as logging.ERROR, got {verbosity!r}")
    _library_logger().setLevel(verbosity)


def set_verbosity_debug() -> None:
    set_verbosity(DEBUG)


def set_verbosity_info() -> None:
    set_verbosity(INFO)


def set_verbosity_warning() -> None:
    set_verbosity(WARNING)


def set_verbosity_error() -> None:
    set_verbosity(ERROR)


_progress_bars_forced = False


def enable_progress_bar(force: bool = False) -> None:
    """Let pipelines show tqdm bars (the default; they still hide themselves when stderr is not a terminal,
    unless ``force=True``)."""
    global _progress_bars_enabled, _progress_bars_forced
    _progress_bars_enabled = True
    _progress_bars_forced = bool(force)


def disable_progress_bar() -> None:
    """Hide every pipeline progress bar unless a pipeline's ``set_progress_bar_config`` asks for one."""
    global _progress_bars_enabled, _progress_bars_forced
    _progress_bars_enabled = False
    _progress_bars_forced = False


def tqdm_disable_option() -> Optional[bool]:
    """The tqdm ``disable`` value library-level bars use: True when disabled, False when forced on, else None
    (tqdm then hides the bar when stderr is not a terminal)."""
    if not _progress_bars_enabled:
        return True
    return False if _progress_bars_forced else None


def is_progress_bar_enabled() -> bool:
    return _progress_bars_enabled
