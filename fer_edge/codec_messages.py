"""Messages of libtiff, captured per decoding thread instead of printed.

libtiff reports through process-wide handlers that print to stderr: such
lines name no file, can carry bytes from a hostile file to the terminal, and a
corrupt JPEG strip inside a TIFF is only a *warning* there, so the image would
pass as good. fer-edge installs its own handlers once (through ctypes, on the
libtiff that Pillow loaded); they record each message for the thread that is
decoding, and :func:`capture` hands them to the loader, which turns decoding
problems into that file's :class:`~fer_edge.errors.ImageError`. Messages
outside a capture go to the ``fer_edge`` logger as warnings.

Where the library cannot be found (a Pillow build that links libtiff
statically, e.g. on Windows), nothing is installed and libtiff prints as before.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

log = logging.getLogger("fer_edge")

#: libtiff modules whose warnings concern tags Pillow has already parsed
#: itself (unknown or odd tags are common in camera files), not the pixels.
TAG_MODULES = frozenset({
    "TIFFReadDirectory", "TIFFReadCustomDirectory", "TIFFFetchNormalTag",
    "TIFFFetchStripThing", "TIFFReadDirectoryCheckOrder", "TIFFReadDirEntry",
    "_TIFFVSetField", "TIFFAdvanceDirectory",
})

_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
_local = threading.local()
_lock = threading.Lock()
_state: dict[str, object] = {}  # "handlers": the installed callbacks, kept alive


def _libtiff_path() -> str | None:
    """The libtiff shared library Pillow's ``_imaging`` loaded, if it is a separate file."""
    import PIL
    from PIL import _imaging  # noqa: F401 - loads libtiff into the process

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if os.path.basename(path).startswith("libtiff"):
                    return path
    except OSError:
        pass  # not Linux: look where macOS wheels keep their libraries
    found = sorted(glob.glob(os.path.join(os.path.dirname(PIL.__file__), ".dylibs", "libtiff*")))
    return found[0] if found else None


def _formatter() -> Callable[[bytes, int], str]:
    """printf-style formatting of libtiff's (format, va_list) with the C library."""
    vsnprintf = ctypes.CDLL(None).vsnprintf
    vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

    def format_message(fmt: bytes, args: int) -> str:
        buf = ctypes.create_string_buffer(1024)
        vsnprintf(buf, len(buf), fmt, args)
        return buf.value.decode("utf-8", "replace")

    return format_message


def _handler(level: str, format_message: Callable[[bytes, int], str]) -> object:
    def record(module: bytes | None, fmt: bytes | None, args: int) -> None:
        try:  # an exception here could not propagate through C: never raise
            text = format_message(fmt or b"", args)
            where = (module or b"libtiff").decode("utf-8", "replace")
            messages = getattr(_local, "messages", None)
            if messages is None:
                log.warning("libtiff %s: %s: %s", level, where, text)
            else:
                messages.append((level, where, text))
        except Exception:  # noqa: BLE001
            pass

    return _HANDLER(record)


def _install() -> bool:
    """Install the handlers once; whether they are in place."""
    with _lock:
        if "installed" not in _state:
            _state["installed"] = False
            try:
                path = _libtiff_path()
                if path is not None:
                    lib = ctypes.CDLL(path)
                    fmt = _formatter()
                    handlers = (_handler("warning", fmt), _handler("error", fmt))
                    for setter, handler in zip((lib.TIFFSetWarningHandler,
                                                lib.TIFFSetErrorHandler), handlers):
                        setter.argtypes, setter.restype = [_HANDLER], ctypes.c_void_p
                        setter(handler)
                    _state["handlers"], _state["installed"] = handlers, True
            except (OSError, AttributeError, ImportError) as exc:
                log.debug("libtiff messages not captured (%s)", exc)
        return bool(_state["installed"])


@contextmanager
def capture() -> Iterator[list[str]]:
    """Collect the pixel-decoding problems libtiff reports in this thread.

    Yields:
        A list that, after the block, holds ``"module: message"`` for each
        libtiff error, and each warning not about tags (:data:`TAG_MODULES`).

    Example:
        >>> from PIL import Image
        >>> with capture() as problems:
        ...     Image.new("L", (4, 4)).load() is not None
        True
        >>> problems
        []
    """
    _install()
    outer = getattr(_local, "messages", None)
    raw: list[tuple[str, str, str]] = []  # (level, where, text), appended by the handler
    _local.messages = raw
    problems: list[str] = []
    try:
        yield problems
    finally:
        _local.messages = outer
        problems.extend(f"{where}: {text}" for level, where, text in raw
                        if level == "error" or where not in TAG_MODULES)
