"""GDAL's messages as Python log records, without libtiff's notes on tag layouts.

rasterio logs GDAL's messages (logger ``rasterio._env``) only in a thread that opened a
dataset inside its environment; elsewhere, in a Dask worker's task threads or a client's
preview thread, GDAL's own handler prints ``Warning 1: …`` on stderr. :func:`route_gdal_messages`
makes GDAL's process-wide handler log too (logger ``pipeline.gdal``), so that every message
reaches the same handlers, and drops from both loggers the warnings libtiff gives while it reads
a file's directory (``TIFFReadDirectory: …``): notes that it found a tag laid out loosely and
read the image anyway, about files common tools write (the Pucallpa composites: four samples
without the ExtraSamples tag), which a user can do nothing about.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import threading
from collections.abc import Callable

__all__ = ["LOGGER", "route_gdal_messages"]

#: Where GDAL's messages from outside rasterio's environment go.
LOGGER = logging.getLogger("pipeline.gdal")

#: GDAL's ``CPLErr`` classes, as logging levels.
_LEVELS = {1: logging.DEBUG, 2: logging.WARNING, 3: logging.ERROR, 4: logging.CRITICAL}

_Handler = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_char_p)

_lock = threading.Lock()
_routed: list[object] = []  # once routed: the handler, kept alive while GDAL may call it


def _not_a_layout_note(record: logging.LogRecord) -> bool:
    """False for a warning libtiff gave while reading a file's directory, true otherwise."""
    return record.levelno != logging.WARNING or "TIFFReadDirectory:" not in record.getMessage()


def route_gdal_messages() -> None:
    """In this process, log every GDAL message and drop libtiff's layout notes (idempotent).

    Where rasterio's GDAL cannot be reached through ctypes, only the filter is installed.
    """
    with _lock:
        if _routed:
            return
        for name in ("rasterio._env", LOGGER.name):
            logging.getLogger(name).addFilter(_not_a_layout_note)
        setter = _gdal_handler_setter()
        if setter is None:
            _routed.append(None)
            return
        handler = _Handler(_log_gdal_message)
        _routed.append(handler)
        previous = setter(ctypes.cast(handler, ctypes.c_void_p).value)
        # GDAL may speak while Python shuts down, when no Python callback may run.
        atexit.register(setter, previous)


def _log_gdal_message(error_class: int, code: int, message: bytes | None) -> None:
    text = (message or b"").decode("utf-8", errors="replace").strip()
    LOGGER.log(_LEVELS.get(error_class, logging.WARNING), "GDAL (%d): %s", code, text)


def _gdal_handler_setter() -> Callable[[int | None], int | None] | None:
    """``CPLSetErrorHandler`` of the GDAL rasterio links (pyogrio may bring a second one)."""
    import rasterio._env

    try:
        setter = ctypes.CDLL(rasterio._env.__file__).CPLSetErrorHandler
    except (OSError, AttributeError):
        return None
    setter.restype = ctypes.c_void_p
    setter.argtypes = [ctypes.c_void_p]
    return setter
