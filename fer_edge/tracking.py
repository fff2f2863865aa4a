"""Face tracks across video frames: greedy IoU matching, motion and per-track smoothing.

:class:`IouTracker` gives each face box a ``track`` id that stays the same
from frame to frame while the face moves; :class:`BoxMotion` estimates each
track's velocity, so a box can be carried forward over frames the detector
skips (``detect_every``); :class:`EmaSmoother` averages each track's
expression probabilities over time so labels do not flicker.

Limits (what IoU matching cannot do, by design: it needs no model and costs
microseconds):

* It only sees box overlap. A face that moves more than about its own width
  between two *detected* frames (fast motion, or a large ``--every`` or
  ``--detect-every``) no longer overlaps its last box and gets a new id.
* Faces that cross each other may swap ids: while their boxes overlap, the
  match goes to the larger overlap, not to who is who.
* A face that leaves the picture, or is not detected, for more than
  ``max_missed`` detection passes gets a new id when it comes back: there is
  no re-identification by appearance. (The tracker is updated only on the
  frames the detector runs on; with ``detect_every=N`` that is every Nth
  analysed frame.)

Example:
    >>> t = IouTracker()
    >>> t.update([(0, 0, 10, 10), (50, 50, 10, 10)])
    [1, 2]
    >>> t.update([(52, 51, 10, 10), (1, 1, 10, 10)])
    [2, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

Box = tuple[int, int, int, int]

#: Boxes overlapping less than this (intersection over union) are different faces.
MIN_IOU = 0.3
#: Detection passes (:meth:`IouTracker.update` calls) a track survives without a
#: matching face (a missed detection, a blink of occlusion) before its id is retired.
MAX_MISSED = 5


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (0 when disjoint).

    Example:
        >>> iou((0, 0, 10, 10), (5, 0, 10, 10))
        0.3333333333333333
    """
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    box: Box
    missed: int = 0


@dataclass
class IouTracker:
    """Greedy IoU matching of each frame's boxes to the live tracks.

    Memory holds only the live tracks (the faces seen within the last
    ``max_missed`` updates), never the history.

    Args:
        min_iou: Least overlap for a box to continue a track.
        max_missed: Updates (detection passes) a track may go unmatched before it ends.

    Attributes:
        ended: Ids of the tracks that ended in the last :meth:`update`
            (for :class:`EmaSmoother` to forget them).
    """

    min_iou: float = MIN_IOU
    max_missed: int = MAX_MISSED
    ended: list[int] = field(default_factory=list)
    _tracks: list[_Track] = field(default_factory=list)
    _next_id: int = 1

    def update(self, boxes: Sequence[Box]) -> list[int]:
        """Assign a track id to each box of the next frame the detector ran on.

        Args:
            boxes: This frame's face boxes, ``(x, y, w, h)``.

        Returns:
            One id per box, in the order given. New faces get new ids, counting
            up from 1; an id is never reused.
        """
        boxes = [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in boxes]
        ids: list[int | None] = [None] * len(boxes)
        if boxes and self._tracks:
            overlap = np.array([[iou(t.box, b) for b in boxes] for t in self._tracks])
            # Greedy on the best remaining overlap: for the few faces of a frame it
            # matches what the Hungarian algorithm would, without SciPy.
            while overlap.size and overlap.max() >= self.min_iou:
                ti, bi = np.unravel_index(int(overlap.argmax()), overlap.shape)
                ids[bi] = self._tracks[ti].id
                self._tracks[ti].box = boxes[bi]
                self._tracks[ti].missed = -1  # reset below, after the ageing step
                overlap[ti, :] = -1.0
                overlap[:, bi] = -1.0
        self.ended = []
        alive: list[_Track] = []
        for track in self._tracks:
            track.missed += 1
            if track.missed > self.max_missed:
                self.ended.append(track.id)
            else:
                alive.append(track)
        self._tracks = alive
        for i, box in enumerate(boxes):
            if ids[i] is None:
                ids[i] = self._next_id
                self._tracks.append(_Track(self._next_id, box))
                self._next_id += 1
        return [i for i in ids if i is not None]

    @property
    def live(self) -> list[int]:
        """Ids of the tracks still alive."""
        return [t.id for t in self._tracks]


class BoxMotion:
    """Each track's velocity, from its boxes on the frames the detector ran on.

    What carries a box over the frames between detections: the box of the
    last detection, shifted by velocity x time since. Velocities are in
    pixels per second of video (not per frame), so they stay right when
    frames are skipped (``--every``, ``--fps``) or dropped (live sources).
    Memory holds the live tracks only (:meth:`forget` the ended ones).

    Args:
        alpha: Weight of the newest displacement in the velocity's moving
            average, in (0, 1]; below 1 it damps the detector's box jitter.

    Example:
        >>> m = BoxMotion(alpha=1.0)
        >>> m.observe(1, (0, 0, 10, 10), 0.0)
        >>> m.observe(1, (10, 4, 10, 10), 0.5)
        >>> m.offset(1, 0.75)
        (5.0, 2.0)
    """

    def __init__(self, alpha: float = 0.5) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"motion alpha must be in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        # track -> (centre x, centre y, time of that box, velocity x, velocity y)
        self._state: dict[int, tuple[float, float, float, float, float]] = {}

    def observe(self, track: int, box: Box, time_s: float) -> None:
        """Record where the detector found ``track`` at ``time_s`` (seconds of video)."""
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        old = self._state.get(track)
        vx = vy = 0.0
        if old is not None and time_s > old[2]:
            dt = time_s - old[2]
            # Centres, not corners: the box size changes a little from detection to detection.
            vx = self.alpha * (cx - old[0]) / dt + (1.0 - self.alpha) * old[3]
            vy = self.alpha * (cy - old[1]) / dt + (1.0 - self.alpha) * old[4]
        self._state[track] = (cx, cy, time_s, vx, vy)

    def offset(self, track: int, time_s: float) -> tuple[float, float]:
        """How far ``track`` has moved, in pixels, from its last observed box by ``time_s``.

        ``(0, 0)`` for a track seen once (no velocity yet) or never.
        """
        state = self._state.get(track)
        if state is None:
            return 0.0, 0.0
        dt = max(0.0, time_s - state[2])
        return state[3] * dt, state[4] * dt

    def forget(self, tracks: Sequence[int]) -> None:
        """Drop ended tracks, so memory stays with the live faces."""
        for track in tracks:
            self._state.pop(track, None)


class EmaSmoother:
    """Exponential moving average of each track's probabilities.

    ``smoothed = alpha * new + (1 - alpha) * previous``; a new track starts at
    its first frame's probabilities. With ``alpha=0.3`` a change of expression
    shows fully after about 7 analysed frames, while one-frame flickers are
    damped to 30%.

    Args:
        alpha: Weight of the newest frame, in (0, 1]; 1 is no smoothing.

    Example:
        >>> s = EmaSmoother(alpha=0.5)
        >>> s.update(1, [1.0, 0.0]).tolist(), s.update(1, [0.0, 1.0]).tolist()
        ([1.0, 0.0], [0.5, 0.5])
    """

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"smoothing alpha must be in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self._state: dict[int, np.ndarray] = {}

    def update(self, track: int, probabilities: Sequence[float] | np.ndarray) -> np.ndarray:
        """The smoothed probabilities of ``track`` after this frame's ``probabilities``."""
        new = np.asarray(probabilities, dtype=np.float64)
        old = self._state.get(track)
        value = new if old is None else self.alpha * new + (1.0 - self.alpha) * old
        self._state[track] = value
        return value

    def forget(self, tracks: Sequence[int]) -> None:
        """Drop ended tracks, so memory stays with the live faces."""
        for track in tracks:
            self._state.pop(track, None)
