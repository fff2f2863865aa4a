"""``python -m fer_edge`` is the ``fer-edge`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
