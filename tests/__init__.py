"""fer-edge's tests, a package so that their helpers import normally.

``from tests.onnx_models import build_model`` and ``from tests.constants
import LABELS2`` work from test modules and from both conftest files, in
pytest's default (prepend) import mode, because the repository root (where the
root ``conftest.py`` lives) is on ``sys.path``.
"""
