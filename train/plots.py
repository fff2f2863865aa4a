"""PNG plots of training curves and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers/CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train vs val."""
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    a.plot(ep, [h["val_loss"] for h in history], label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    b.plot(ep, [h["train_acc"] for h in history], label="train acc")
    b.plot(ep, [h["val_acc"] for h in history], label="val acc")
    b.plot(ep, [h["val_macro_f1"] for h in history], label="val macro-F1")
    b.set(xlabel="epoch", title="accuracy")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(metrics: dict, path: Path) -> None:
    """Confusion matrix with counts and row-normalised shading."""
    import numpy as np

    cm = np.asarray(metrics["confusion_matrix"])
    classes = metrics["classes"]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=45)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"val accuracy {metrics['accuracy']:.1%}, macro-F1 {metrics['macro_f1']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
