"""The fer-edge version, in a module of its own.

Kept apart from ``fer_edge/__init__.py`` so that any module of the package
(``classifier``, ``cli``) and the build (``pyproject.toml`` reads it as
``fer_edge._version.__version__``) can read it without importing the package's
public API first, i.e. without depending on the order of imports in
``__init__``.

Example:
    >>> from fer_edge._version import __version__
    >>> __version__.count(".") >= 1
    True
"""

__version__ = "0.1.0"
