"""Distillation teachers: exported ONNX models run by ONNX Runtime.

A teacher is any file ``python -m export`` wrote (the shipped ``default.onnx``,
an ensemble) whose labels are the student's classes, in any order. It needs
no checkpoint and no torch model, only the file. Several teachers are
averaged in logit space.

Two ways to feed it:

* online: each augmented training batch is resized to the teacher's input
  size and normalised with the teacher's own statistics, so the teacher sees
  what the student sees;
* cached: once per training image, before the first epoch, with the runtime's
  own preprocessing at the teacher's size; far cheaper on a small machine.
  A flip-TTA teacher gives a flipped image the same target, so flips stay exact;
* paired: cached, but a detector crop (``NAME.SCENE.png`` beside its bare
  image ``NAME.png``, as ``tools/measure_framing.py crops`` writes them) takes
  the teacher's logits of its bare image: the student learns to give the face
  the detector found the answer the teacher gives the tight crop.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fer_edge import Classifier
from fer_edge.errors import ModelError, ProviderError
from fer_edge.preprocess import normalize, preprocess_gray

from .augment import to_input
from .checkpoint import file_sha256

_BATCH = 256


class TeacherError(ValueError):
    """A teacher cannot be used for this student (missing file, other labels)."""


class Teacher:
    """The averaged logits of one or more exported models, in the student's class order.

    Args:
        paths: ONNX files written by ``python -m export``.
        classes: The student's classes; every teacher must have exactly these labels.
        threads: ONNX Runtime intra-op threads (0: its default).

    Raises:
        TeacherError: A file cannot be loaded, or its labels differ (both lists named).
    """

    def __init__(self, paths: Sequence[str], classes: Sequence[str], threads: int = 0) -> None:
        if not paths:
            raise TeacherError("no teacher model given")
        self.paths = [Path(p) for p in paths]
        self.models: list[Classifier] = []
        self.orders: list[list[int]] = []
        for path in self.paths:
            try:
                clf = Classifier(path, providers="cpu", threads=threads, batch_size=_BATCH)
            except (ModelError, ProviderError) as exc:
                raise TeacherError(f"teacher {exc}") from None
            if sorted(clf.labels) != sorted(classes):
                raise TeacherError(f"teacher {path}: its labels {clf.labels} differ from the "
                                   f"student's classes {list(classes)}")
            self.models.append(clf)
            self.orders.append([clf.labels.index(c) for c in classes])
        self.digest = hashlib.sha256("".join(file_sha256(p) for p in self.paths).encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Teacher({[str(p) for p in self.paths]})"

    @torch.no_grad()
    def logits_01(self, x01: torch.Tensor) -> torch.Tensor:
        """Teacher logits for a batch in [0, 1], shape (B, 1, S, S), any S (online mode)."""
        out = []
        for clf, order in zip(self.models, self.orders):
            spec = clf.spec
            size = spec.input_size
            x = x01.float().cpu()
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=size < x.shape[-1])
            inputs = to_input(x, spec).numpy().astype(np.float32)
            out.append(torch.from_numpy(clf.logits(inputs)[:, order]))
        return torch.stack(out).mean(0)

    def logits_files(self, paths: Sequence[str]) -> np.ndarray:
        """Teacher logits for image files, with the runtime's preprocessing (cached mode)."""
        total = np.zeros((len(paths), len(self.orders[0])), dtype=np.float64)
        for clf, order in zip(self.models, self.orders):
            size = clf.spec.input_size
            for i in range(0, len(paths), _BATCH):
                grays = np.stack([preprocess_gray(p, size) for p in paths[i:i + _BATCH]])
                total[i:i + len(grays)] += clf.logits(normalize(grays, clf.spec))[:, order]
        return (total / len(self.models)).astype(np.float32)

    def cached(self, paths: Sequence[str], root: Path, cache: Path) -> np.ndarray:
        """:meth:`logits_files`, kept in ``cache`` (an .npz) and reused when still valid.

        The cache is keyed by the teachers' content hash and the image names
        relative to ``root``, so a moved data folder still hits it.
        """
        names = np.array([str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else str(p)
                          for p in paths])
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                if str(z["digest"]) == self.digest and z["names"].shape == names.shape \
                        and bool(np.all(z["names"] == names)):
                    print(f"teacher logits from {cache}", file=sys.stderr)
                    return z["logits"]
        logits = self.logits_files(paths)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, digest=np.array(self.digest), names=names, logits=logits)
        tmp.replace(cache)
        return logits


def paired_sources(paths: Sequence[str]) -> list[str]:
    """Each training image's bare source: itself, or for a detector crop its bare sibling.

    A crop is a file ``NAME.SCENE.ext`` whose folder also holds ``NAME`` with an
    image extension (``tools/measure_framing.py crops`` writes ``NAME.png`` as a
    symlink to the bare image and ``NAME.SCENE.png`` beside it). A dotted name
    without such a sibling is its own source.

    Example:
        >>> paired_sources(["a/1.png", "a/1.edge-96-288.png", "a/2.x.png"])
        ['a/1.png', 'a/1.png', 'a/2.x.png']
    """
    by_stem = {(str(Path(p).parent), Path(p).stem): p for p in paths}
    out = []
    for p in paths:
        path = Path(p)
        stem = path.stem
        if "." in stem:
            out.append(by_stem.get((str(path.parent), stem.rsplit(".", 1)[0]), p))
        else:
            out.append(p)
    return out


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean.

    Example:
        >>> z = torch.tensor([[2.0, 0.0, -1.0]])
        >>> abs(float(kd_loss(z, z, 2.0))) < 1e-6, float(kd_loss(z, -z, 2.0)) > 0
        (True, True)
    """
    t = temperature
    log_p = F.log_softmax(student.float() / t, dim=1)
    q = F.softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (t * t)
