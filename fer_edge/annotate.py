"""Draw face boxes and predicted labels onto a copy of an image.

Pillow only (no OpenCV), so annotating works without face detection,
e.g. for ``faces="off"`` results whose one box is the whole image.

Example:
    >>> from types import SimpleNamespace
    >>> from PIL import Image
    >>> face = SimpleNamespace(box=(10, 10, 40, 40), label="happy", score=0.87)
    >>> out = annotate(Image.new("L", (64, 64)), [face])
    >>> out.mode, out.size
    ('RGB', (64, 64))
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from .preprocess import to_gray

#: Box colours, all light enough for black label text. A label always gets the
#: same colour (chosen by a checksum of its name), across images and runs.
#: Boxes get a thin :data:`EDGE_COLOUR` rim on both sides, so they stand out
#: on light backgrounds as well as dark ones.
PALETTE = (
    (255, 215, 0),
    (0, 230, 118),
    (0, 191, 255),
    (255, 105, 180),
    (255, 140, 0),
    (173, 255, 47),
    (64, 224, 208),
    (255, 160, 122),
)
TEXT_COLOUR = (0, 0, 0)
EDGE_COLOUR = (0, 0, 0)
NO_FACE_TEXT = "no face found"

# Modes whose values are not 0..255 go through to_gray, which rescales them;
# Pillow's own convert("RGB") would clip 16-bit and float images to white.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

_Font = Any  # ImageFont.FreeTypeFont, or ImageFont.ImageFont without FreeType


def _to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image with the input's picture (alpha dropped, as to_gray does)."""
    if image.mode in _WIDE_MODES:
        return to_gray(image).convert("RGB")
    if image.mode in ("P", "PA"):
        # Via RGBA, so palette transparency does not trigger Pillow's warning.
        image = image.convert("RGBA")
    return image.convert("RGB")


def _font(size: int) -> _Font:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        # Pillow < 10.1 has only the fixed-size bitmap default font.
        return ImageFont.load_default()


def _xywh(box: Any) -> tuple[int, int, int, int]:
    """(x, y, w, h) from a FaceBox-like object or a 4-sequence."""
    if all(hasattr(box, a) for a in ("x", "y", "w", "h")):
        return int(box.x), int(box.y), int(box.w), int(box.h)
    x, y, w, h = box
    return int(x), int(y), int(w), int(h)


def _colour(label: str) -> tuple[int, int, int]:
    return PALETTE[zlib.crc32(label.encode("utf-8")) % len(PALETTE)]


def _draw_tag(
    draw: ImageDraw.ImageDraw,
    text: str,
    anchor: tuple[int, int],
    inside_top: int,
    colour: tuple[int, int, int],
    font: _Font,
    image_width: int,
) -> None:
    """Text on a filled tag just above ``anchor``, or at ``inside_top`` when
    there is no room above; kept inside the image where it fits."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 5)
    tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
    x = max(0, min(anchor[0], image_width - tag_w))
    y = anchor[1] - tag_h if anchor[1] - tag_h >= 0 else inside_top
    draw.rectangle((x, y, x + tag_w - 1, y + tag_h - 1), fill=colour)
    draw.text((x + pad - left, y + pad - top), text, fill=TEXT_COLOUR, font=font)


def annotate(image: Image.Image, faces: Sequence[Any]) -> Image.Image:
    """Return an RGB copy of ``image`` with each face's box and label drawn.

    Line width and text size scale with the image (about 0.4% and 3% of its
    shorter side), so the drawing looks alike on thumbnails and 12 MP photos.
    An image without faces gets a "no face found" tag in its top-left corner.

    Args:
        image: The image the boxes refer to (any Pillow mode); not modified.
        faces: Items with ``.box`` ((x, y, w, h) or a FaceBox), ``.label``
            (str) and ``.score`` (float in [0, 1]), e.g. classification
            results. An optional ``.colour_label`` picks the colour instead
            of ``.label`` (the video's tags read ``#3 happy``, coloured as
            ``happy``).

    Returns:
        A new RGB image of the same size.

    Example:
        >>> from types import SimpleNamespace
        >>> from PIL import Image
        >>> src = Image.new("RGB", (200, 100), "white")
        >>> out = annotate(src, [SimpleNamespace(box=(50, 20, 60, 60), label="sad", score=0.5)])
        >>> out.getpixel((50, 50)) != (255, 255, 255), src.getpixel((50, 50))
        (True, (255, 255, 255))
    """
    canvas = _to_rgb(image)
    draw = ImageDraw.Draw(canvas)
    short = min(canvas.size)
    line = max(1, round(short / 250))
    font = _font(max(10, round(short * 0.03)))
    if not faces:
        _draw_tag(draw, NO_FACE_TEXT, (0, 0), 0, PALETTE[0], font, canvas.width)
    for face in faces:
        x, y, w, h = _xywh(face.box)
        colour = _colour(getattr(face, "colour_label", None) or face.label)
        # A dark rim first (one edge wider on each side), then the colour on top.
        edge = max(1, line // 2)
        draw.rectangle((x - edge, y - edge, x + w - 1 + edge, y + h - 1 + edge),
                       outline=EDGE_COLOUR, width=line + 2 * edge)
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline=colour, width=line)
        tag = f"{face.label} {face.score:.0%}"
        _draw_tag(draw, tag, (x, y), y + line, colour, font, canvas.width)
    return canvas


def annotated_path(src: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Where the annotated copy of ``src`` goes: ``out_dir/<stem>.annotated.png``.

    The name always differs from the input's (it adds ``.annotated`` and is
    PNG, so no re-encoding loss), and an existing file is never chosen:
    ``-1``, ``-2``, ... are appended until the name is free, so two inputs
    ``a/x.jpg`` and ``b/x.jpg`` annotated into one folder both survive. Only
    the name is chosen; :func:`save_annotated` also writes without a race.

    Args:
        src: The input image's path (need not exist).
        out_dir: The folder for annotated copies.

    Returns:
        A path in ``out_dir`` that does not exist yet.

    Raises:
        ValueError: ``src`` has no file name (e.g. ``""`` or ``"/"``).

    Example:
        >>> annotated_path("photos/team.jpg", "/nonexistent/out").as_posix()
        '/nonexistent/out/team.annotated.png'
    """
    src, out_dir = Path(src), Path(out_dir)
    if not src.name:
        raise ValueError(f"{str(src)!r} has no file name to derive an annotated name from")
    candidate = out_dir / f"{src.stem}.annotated.png"
    n = 0
    # is_symlink(): a dangling link "does not exist" but writing would follow it.
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = out_dir / f"{src.stem}.annotated-{n}.png"
    return candidate


def save_annotated(image: Image.Image, src: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``image`` as PNG to :func:`annotated_path` (creating ``out_dir``).

    The file is created exclusively, so a file that appears between choosing
    the name and writing (another process, a parallel run) is never
    overwritten: the next free name is taken instead. A failed write removes
    its partial file.

    Args:
        image: The annotated image, e.g. from :func:`annotate`.
        src: The input image's path, for the name.
        out_dir: The folder for annotated copies.

    Returns:
        The path written.

    Raises:
        OSError: ``out_dir`` cannot be created or written.
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    while True:
        path = annotated_path(src, out_dir)
        try:
            f = open(path, "xb")
        except FileExistsError:
            continue  # taken since annotated_path looked; pick the next name
        try:
            with f:
                image.save(f, format="PNG")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path
