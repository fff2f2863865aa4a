"""The one atomic file writer: the CLI's results, export's ONNX files and train's checkpoints.

Content goes to a temporary file in the target's folder, is flushed and
fsync-ed, gets the permissions a plain ``open`` would give, and only then is
put in place by a rename. Readers never see a half-written file, and a run
that fails or is killed leaves any previous file untouched (and no temporary
file behind, unless the process dies without unwinding).

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
    >>> with atomic_write(out, "wb") as f:
    ...     _ = f.write(b"data")
    >>> out.read_bytes(), sorted(p.name for p in out.parent.iterdir())
    (b'data', ['a.bin'])
"""

from __future__ import annotations

import errno
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

#: Puts the finished temporary file at the target path (it may raise to refuse).
Placer = Callable[[Path, Path], None]


def current_umask() -> int:
    """The process umask (files created by ``open`` get 0o666 minus this)."""
    # os.umask can only be read by setting it; restore at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace(tmp: Path, path: Path) -> None:
    """Placer: rename over ``path``, whatever regular file was there."""
    os.replace(tmp, path)


def create_new(tmp: Path, path: Path) -> None:
    """Placer: link to ``path`` only if nothing is there (no check-then-write race).

    Raises:
        FileExistsError: ``path`` exists.
    """
    os.link(tmp, path)


# What tempfile.mkstemp opens with: a new private file, never through a link.
_TEMP_FLAGS = (os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


def _temporary_names(path: Path) -> Iterator[Path]:
    """Candidate temporary names next to ``path``: hidden, this process's, random."""
    for _ in range(100):
        yield path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    raise FileExistsError(errno.EEXIST, f"no free temporary file name next to {path}")


def _open_temporary(tmp: Path) -> int:
    """Create ``tmp`` (0600, it must not exist) and return its descriptor."""
    return os.open(tmp, _TEMP_FLAGS, 0o600)


@contextmanager
def atomic_write(path: Path, mode: str = "w", place: Placer = replace,
                 **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` that becomes ``path`` when the block succeeds.

    Args:
        path: The file to write; its folder must exist.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        place: How the finished file is put in place: :func:`replace` (default)
            or :func:`create_new`, or any function of (temporary, target).
        **open_kwargs: Passed to :func:`open` (``encoding``, ``newline``).

    Raises:
        OSError: creating, writing or placing failed; nothing is left behind.
    """
    tmp: Path | None = None
    fd = -1
    try:
        # The name is chosen before the file exists (unlike with mkstemp), so a
        # stop signal at any moment after the file is made reaches the
        # ``finally`` below, which removes it.
        for tmp in _temporary_names(path):
            try:
                fd = _open_temporary(tmp)
                break
            except FileExistsError:
                tmp = None  # not made here: never ours to remove
        assert tmp is not None  # the names run out with FileExistsError, never silently
        try:
            f = os.fdopen(fd, mode, **open_kwargs)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # The file was made private (0600); give it the usual permissions.
        os.chmod(tmp, 0o666 & ~current_umask())
        place(tmp, path)
    finally:
        # After a rename the temporary name is gone; after a link or a failure it is not.
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
