"""Classification metrics (numpy only, so benchmarks/ can share them)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def summarize(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix.

    Example:
        >>> r = summarize(np.array([0, 1, 1]), np.array([0, 1, 0]), ["a", "b"])
        >>> round(r["accuracy"], 3), r["confusion_matrix"]
        (0.667, [[1, 0], [1, 1]])
    """
    n = len(classes)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(np.float64)
    pred_pos = cm.sum(0).astype(np.float64)
    true_pos = cm.sum(1).astype(np.float64)
    precision = np.divide(tp, pred_pos, out=np.zeros(n), where=pred_pos > 0)
    recall = np.divide(tp, true_pos, out=np.zeros(n), where=true_pos > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    total = cm.sum()
    return {
        "n": int(total),
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]),
                "f1": float(f1[i]), "support": int(true_pos[i])}
            for i, c in enumerate(classes)
        },
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
    }
