"""Facts shared by the test modules: where the repository is, the test models' labels.

Example:
    >>> (REPO / "pyproject.toml").is_file(), LABELS2
    (True, ['happy', 'sad'])
"""

from __future__ import annotations

from pathlib import Path

#: The repository root.
REPO = Path(__file__).resolve().parents[1]
#: The ``model_path`` fixture's labels.
LABELS2 = ["happy", "sad"]
#: The shipped model's classes, and the classes of most tiny checkpoints.
LABELS3 = ["happy", "neutral", "sad"]
#: The ``model7_path`` fixture's labels: the 7 FER-2013 classes.
LABELS7 = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
