"""Per-track summaries of a video and a timeline chart, drawn with Pillow.

:class:`TrackSummary` collects, for every track, the frames seen, first and
last time and how often each label won; :class:`Timeline` keeps each
track's probabilities over time in a bounded number of points (it averages
neighbours when full), and :func:`draw_timeline` draws them as one stacked
band chart per track: time runs left to right, each label's share of the
probability is a coloured band, so the dominant expression and its changes
are seen at a glance. Pillow only: the runtime gains no plotting dependency.

Example:
    >>> s = TrackSummary(["happy", "sad"])
    >>> s.add(1, 0.0, "happy"); s.add(1, 0.5, "sad"); s.add(1, 1.0, "happy")
    >>> row = s.rows()[0]
    >>> row["track"], row["frames"], row["dominant"], round(row["share"]["happy"], 3)
    (1, 3, 'happy', 0.667)
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from typing import Any, Sequence, TextIO

import numpy as np
from PIL import Image, ImageDraw

from .annotate import _colour, _font
from .output import csv_text

#: Points kept per track; beyond it neighbours are averaged (memory stays bounded).
MAX_POINTS = 2048
#: Tracks drawn at most (the longest ones); a chart of hundreds of rows is unreadable.
MAX_ROWS = 12


@dataclass
class _TrackStats:
    frames: int = 0
    first_s: float = 0.0
    last_s: float = 0.0
    wins: dict[str, int] = field(default_factory=dict)


class TrackSummary:
    """Per-track counts: frames seen, first/last time, share of frames per label.

    Args:
        labels: The model's labels, in order (every share is reported, also zeros).
    """

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self._tracks: dict[int, _TrackStats] = {}

    def add(self, track: int, time_s: float, label: str) -> None:
        """Count one analysed frame of ``track`` whose (smoothed) label was ``label``."""
        stats = self._tracks.get(track)
        if stats is None:
            stats = self._tracks[track] = _TrackStats(first_s=time_s)
        stats.frames += 1
        stats.last_s = time_s
        stats.wins[label] = stats.wins.get(label, 0) + 1

    def rows(self) -> list[dict[str, Any]]:
        """One dict per track, by track id: ``track``, ``frames``, ``first_s``,
        ``last_s``, ``dominant`` and ``share`` (label -> fraction of its frames)."""
        rows = []
        for track in sorted(self._tracks):
            s = self._tracks[track]
            share = {label: s.wins.get(label, 0) / s.frames for label in self.labels}
            # Ties go to the label first in the model's order, so reruns agree.
            dominant = max(self.labels, key=lambda label: (share[label], -self.labels.index(label)))
            rows.append({"track": track, "frames": s.frames, "first_s": round(s.first_s, 6),
                         "last_s": round(s.last_s, 6), "dominant": dominant, "share": share})
        return rows

    def write(self, stream: TextIO, fmt: str) -> None:
        """Write :meth:`rows` as ``json`` (one object) or ``csv`` (one row per track)."""
        rows = self.rows()
        if fmt == "json":
            json.dump({"labels": self.labels, "tracks": rows}, stream, indent=2, ensure_ascii=False,
                      allow_nan=False)
            stream.write("\n")
            return
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["track", "frames", "first_s", "last_s", "dominant",
                         *(csv_text(f"share_{label}") for label in self.labels)])
        for row in rows:
            writer.writerow([row["track"], row["frames"], row["first_s"], row["last_s"],
                             csv_text(row["dominant"]),
                             *(f"{row['share'][label]:.6f}" for label in self.labels)])


class _Series:
    """Times and probability rows of one track, at most ``cap`` points."""

    def __init__(self, n_labels: int, cap: int) -> None:
        self.times = np.empty(cap, dtype=np.float64)
        self.probs = np.empty((cap, n_labels), dtype=np.float32)
        self.n = 0
        self.cap = cap
        # Each stored point averages ``stride`` frames once the series was halved.
        self.stride = 1
        self._pending: list[tuple[float, np.ndarray]] = []

    def add(self, time_s: float, probs: np.ndarray) -> None:
        self._pending.append((time_s, probs))
        if len(self._pending) < self.stride:
            return
        times, rows = zip(*self._pending)
        self._pending = []
        if self.n == self.cap:
            # Full: average neighbouring pairs, then each new point covers twice the frames.
            half = self.n // 2
            self.times[:half] = self.times[:2 * half].reshape(half, 2).mean(axis=1)
            self.probs[:half] = self.probs[:2 * half].reshape(half, 2, -1).mean(axis=1)
            self.n = half
            self.stride *= 2
        self.times[self.n] = float(np.mean(times))
        self.probs[self.n] = np.mean(rows, axis=0)
        self.n += 1


class Timeline:
    """Each track's probabilities over time, for :func:`draw_timeline`.

    Memory is bounded: at most ``max_points`` points per track (see
    :data:`MAX_POINTS`), whatever the video's length.

    Args:
        labels: The model's labels, in order.
        max_points: Points kept per track.
    """

    def __init__(self, labels: Sequence[str], max_points: int = MAX_POINTS) -> None:
        self.labels = list(labels)
        self.max_points = max_points
        self._series: dict[int, _Series] = {}
        self.end_s = 0.0

    def add(self, track: int, time_s: float, probabilities: dict[str, float]) -> None:
        """Record one analysed frame of ``track``."""
        series = self._series.get(track)
        if series is None:
            series = self._series[track] = _Series(len(self.labels), self.max_points)
        series.add(time_s, np.array([probabilities.get(k, 0.0) for k in self.labels], np.float32))
        self.end_s = max(self.end_s, time_s)

    def tracks(self) -> list[int]:
        """Track ids, by id."""
        return sorted(self._series)

    def points(self, track: int) -> tuple[np.ndarray, np.ndarray]:
        """``(times, probabilities)`` of a track: shapes (n,) and (n, labels)."""
        s = self._series[track]
        return s.times[:s.n], s.probs[:s.n]


def draw_timeline(timeline: Timeline, title: str = "", width: int = 1200,
                  row_height: int = 90) -> Image.Image:
    """One stacked band chart per track (the :data:`MAX_ROWS` longest), with a legend.

    A track is drawn only where it was seen; a gap longer than ~3 points'
    spacing (the face left, or was not detected) stays blank.

    Returns:
        An RGB image ``width`` wide.
    """
    font = _font(14)
    small = _font(12)
    tracks = timeline.tracks()
    if len(tracks) > MAX_ROWS:
        longest = sorted(tracks, key=lambda t: -len(timeline.points(t)[0]))[:MAX_ROWS]
        omitted = len(tracks) - MAX_ROWS
        tracks = sorted(longest)
    else:
        omitted = 0
    left, right, top, gap = 90, 20, 56, 14
    axis_h = 36
    height = top + max(1, len(tracks)) * (row_height + gap) + axis_h
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    heading = title + (f"  ({omitted} shorter tracks not drawn)" if omitted else "")
    draw.text((10, 8), heading or "expression timeline", fill=(0, 0, 0), font=font)
    # Legend: one swatch per label, in the label colours the annotated frames use.
    x = 10
    for label in timeline.labels:
        draw.rectangle((x, 32, x + 12, 44), fill=_colour(label))
        draw.text((x + 16, 31), label, fill=(0, 0, 0), font=small)
        x += 16 + int(draw.textlength(label, font=small)) + 14
    span = max(timeline.end_s, 1e-6)
    plot_w = width - left - right

    def px(t: float) -> float:
        return left + plot_w * t / span

    if not tracks:
        draw.text((left, top + 30), "no faces found", fill=(90, 90, 90), font=font)
    for row, track in enumerate(tracks):
        y0 = top + row * (row_height + gap)
        y1 = y0 + row_height
        draw.rectangle((left, y0, left + plot_w, y1), outline=(200, 200, 200), fill=(245, 245, 245))
        draw.text((10, y0 + row_height // 2 - 8), f"track {track}", fill=(0, 0, 0), font=font)
        times, probs = timeline.points(track)
        if len(times) == 0:
            continue
        step = float(np.median(np.diff(times))) if len(times) > 1 else span / 100
        for i, t in enumerate(times):
            # Each point is a column up to the next point (or one step when the
            # next is far away: the face was not seen in between).
            t_next = times[i + 1] if i + 1 < len(times) and times[i + 1] - t <= 3 * step else t + step
            xa, xb = px(t), max(px(t_next), px(t) + 1)
            base = float(y1)
            for k, label in enumerate(timeline.labels):
                h = float(probs[i, k]) * row_height
                if h > 0:
                    draw.rectangle((xa, base - h, xb, base), fill=_colour(label))
                base -= h
    # Time axis with ~8 round ticks.
    axis_y = top + max(1, len(tracks)) * (row_height + gap)
    draw.line((left, axis_y, left + plot_w, axis_y), fill=(0, 0, 0))
    tick = _nice_step(span / 8)
    t = 0.0
    while t <= span + 1e-9:
        x_t = px(t)
        draw.line((x_t, axis_y, x_t, axis_y + 5), fill=(0, 0, 0))
        draw.text((x_t - 10, axis_y + 8), f"{t:g} s", fill=(0, 0, 0), font=small)
        t += tick
    return img


def _nice_step(raw: float) -> float:
    """The 1-2-5 step nearest above ``raw`` (axis ticks people read easily).

    Example:
        >>> _nice_step(0.13), _nice_step(7.0), _nice_step(40.0)
        (0.2, 10.0, 50.0)
    """
    if raw <= 0:
        return 1.0
    magnitude = 10 ** np.floor(np.log10(raw))
    for m in (1, 2, 5, 10):
        if m * magnitude >= raw - 1e-12:
            return float(m * magnitude)
    return float(10 * magnitude)
