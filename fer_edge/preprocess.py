"""Image loading and preprocessing: the single source of truth.

The runtime (:class:`fer_edge.Classifier`) and the training evaluation
(``train/``) both call :func:`preprocess_gray` / :func:`normalize`, so the
tensor fed to the ONNX model is exactly the tensor the model was validated on.

Pipeline for one face image::

    any Pillow image --to_gray--> 8-bit grayscale "L"
        --resize_gray--> uint8 (S, S), Pillow bilinear
        --normalize--> float32 (3, S, S): (x / 255 - mean[c]) / std[c]

FER-2013 is grayscale, so colour photos are reduced to luma (ITU-R 601-2, as
Pillow's ``convert("L")``) and the grey plane is repeated on the three input
channels the ImageNet-initialised network expects.

Example:
    >>> import numpy as np
    >>> from fer_edge.preprocess import PreprocessSpec, preprocess
    >>> spec = PreprocessSpec(input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> x = preprocess(np.zeros((48, 48), dtype=np.uint8), spec)
    >>> x.shape, float(x.min())
    ((3, 32, 32), -1.0)
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Union

import numpy as np
from PIL import Image, ImageOps

from . import codec_messages
from .errors import ImageError


@dataclass(frozen=True)
class EncodedImage:
    """The bytes of an image file, with the name it is reported under.

    What a file read somewhere else becomes (by Ray from a cluster's file
    system or object store, from HTTP...): it is decoded exactly as the file
    ``name`` would be, with the same formats, checks and error messages, so
    both give the same result.

    Attributes:
        name: The file's path or URI, used in results and error messages.
        data: The file's content.

    Example:
        >>> import io
        >>> buf = io.BytesIO()
        >>> Image.new("L", (6, 4)).save(buf, "PNG")
        >>> load_image(EncodedImage("a.png", buf.getvalue())).size
        (6, 4)
        >>> load_image(EncodedImage("b.jpg", b""))
        Traceback (most recent call last):
        fer_edge.errors.ImageError: b.jpg: empty file
    """

    name: str
    data: bytes


#: What :func:`load_image` accepts.
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, EncodedImage]

#: Images with more pixels than this are refused before decoding (decompression
#: bombs). 50 megapixels covers any real camera photo of a face.
MAX_PIXELS = 50_000_000

#: The formats fer-edge decodes (Pillow format names), recognised by content:
#: a file whose bytes are anything else is refused, whatever its name. All are
#: decoded in-process by Pillow's bundled libraries. Left out on purpose: EPS/PS
#: (Pillow runs Ghostscript on them), PDF, stub formats (HDF5, GRIB, BUFR, WMF)
#: and rare codecs, which add attack surface but no photos. Multi-picture JPEGs
#: from cameras (MPO) are opened by the JPEG entry.
RASTER_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA")

#: Larger JPEGs are decoded at 1/2, 1/4 or 1/8 scale when the caller needs
#: fewer pixels (see :func:`load_reduced`). Phone photos (12 MP) and face crops
#: stay decoded exactly as in training; 48 MP photos take a quarter of the memory.
REDUCE_ABOVE_PIXELS = 16_000_000

COLOR_MODES = ("gray3",)


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes the model's input tensor.

    Stored in every checkpoint and in every exported ONNX file, so inference
    never guesses.

    Attributes:
        input_size: Side of the square model input in pixels.
        color_mode: ``"gray3"``: 8-bit luma repeated on 3 channels.
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel standard deviation divided by after that.
    """

    input_size: int = 96
    color_mode: str = "gray3"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, int) or not 8 <= self.input_size <= 1024:
            raise ValueError(f"input_size must be an int in 8..1024, got {self.input_size!r}")
        if self.color_mode not in COLOR_MODES:
            raise ValueError(f"color_mode {self.color_mode!r} is not one of {COLOR_MODES}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values each (one per input channel)")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            # Caught here, at model load, rather than as NaN logits at the first image.
            raise ValueError(f"mean and std must be finite numbers, got mean {self.mean}, "
                             f"std {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")

    def to_dict(self) -> dict:
        """Plain-JSON form, as stored in checkpoints and ONNX metadata."""
        return {
            "input_size": self.input_size,
            "color_mode": self.color_mode,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on bad values."""
        try:
            return cls(
                input_size=int(d["input_size"]),
                color_mode=str(d.get("color_mode", "gray3")),
                mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad preprocessing spec {d!r}: {exc}") from exc


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, EncodedImage):
        return source.name
    return f"<{type(source).__name__}>"


def _too_large(name: str, size: str) -> ImageError:
    """The one message for every image refused for its size (``size``: "WxH" or a count)."""
    return ImageError(f"{name}: refused, image too large: {size} pixels exceeds the "
                      f"{MAX_PIXELS:,}-pixel limit")


def _bomb(name: str, exc: Image.DecompressionBombError) -> ImageError:
    # Pillow refuses images over twice its own limit before we see their size;
    # its message holds the pixel count, which keeps our wording for them too.
    found = re.search(r"\((\d+) pixels\)", str(exc))
    count = f"{int(found.group(1)):,}" if found else f"over {2 * (Image.MAX_IMAGE_PIXELS or 0):,}"
    return _too_large(name, count)


def _reason(exc: BaseException) -> str:
    """An exception as text for a message; odd types keep their name (they say most)."""
    if isinstance(exc, (OSError, ValueError, SyntaxError)) and str(exc):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _check_file(path: Path, name: str) -> None:
    """Refuse what is not a non-empty regular file, before any byte is read."""
    if path.is_dir():
        raise ImageError(f"{name}: is a directory, not an image")
    if not path.exists():
        reason = "broken or looping symbolic link" if path.is_symlink() else "no such file"
        raise ImageError(f"{name}: {reason}")
    if not path.is_file():
        # A FIFO or device would block or never end when read.
        raise ImageError(f"{name}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageError(f"{name}: empty file")


def _open_path(path: Path, min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Open and decode an image file, refusing bombs and foreign formats before decoding."""
    name = os.fsdecode(path)
    # _check_file inside _open_image's try: stat() itself fails with EACCES in a
    # folder we may not search.
    img = _open_image(path, name, check=lambda: _check_file(path, name))
    _check_stream_size(img, name, lambda: path.stat().st_size)
    return _decode(img, name, min_side)


def _open_encoded(source: EncodedImage,
                  min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`_open_path` for bytes read elsewhere: the same checks, in the same order."""
    if not source.data:
        raise ImageError(f"{source.name}: empty file")
    img = _open_image(io.BytesIO(source.data), source.name)
    _check_stream_size(img, source.name, lambda: len(source.data))
    return _decode(img, source.name, min_side)


def _open_image(fp: Path | BinaryIO, name: str,
                check: Callable[[], None] | None = None) -> Image.Image:
    """Identify (not decode) an image file or stream; every refusal is an ImageError.

    ``check`` runs first, inside the same error handling (the file checks).
    """
    try:
        if check is not None:
            check()
        # formats=: chosen by content among RASTER_FORMATS only, so no name can
        # make Pillow run Ghostscript (EPS) or any other decoder.
        return Image.open(fp, formats=RASTER_FORMATS)
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except Image.DecompressionBombError as exc:
        raise _bomb(name, exc) from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (content is not "
                         f"{', '.join(RASTER_FORMATS)})") from None
    except Exception as exc:  # plugins raise anything on hostile bytes (NotImplementedError...)
        raise ImageError(f"{name}: not a readable image ({_reason(exc)})") from None


def _check_stream_size(img: Image.Image, name: str, file_size: Callable[[], int]) -> None:
    """Refuse a JPEG whose file is too short for the size its header claims.

    libjpeg fills what a stream lacks with grey and only warns (Pillow keeps
    the warning to itself), so a 7000x7000 header over a 48x48 stream would
    decode "fine". Huffman coding spends at least one bit per 8x8 block of the
    first component, so a real stream has at least that many bytes.
    """
    if img.format not in ("JPEG", "MPO"):
        return
    w, h = img.size
    needed = math.ceil(w / 8) * math.ceil(h / 8) // 8
    size = file_size()
    if size < needed:
        raise ImageError(f"{name}: truncated or corrupt image data (header says {w}x{h}, "
                         f"which needs at least {needed:,} bytes; the file has {size:,})")


def _exif_size(img: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """``size`` after the EXIF orientation :func:`ImageOps.exif_transpose` applies."""
    turned = img.getexif().get(0x0112) in (5, 6, 7, 8)
    return (size[1], size[0]) if turned else size


def _reduce_early(img: Image.Image, min_side: int | None) -> None:
    """Let libjpeg decode a big JPEG at 1/2..1/8 scale, keeping both sides >= ``min_side``."""
    w, h = img.size
    if min_side and w * h > REDUCE_ABOVE_PIXELS and img.format in ("JPEG", "MPO"):
        img.draft(img.mode, (min_side, min_side))


def _decode(img: Image.Image, name: str,
            min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Check the header's size, then decode pixels and apply EXIF orientation.

    Returns:
        The decoded image and the full (w, h) of the source after EXIF
        orientation; the image is smaller only when it was reduced early.
    """
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        # Checked on the header, before load(), so nothing big is allocated.
        raise _too_large(name, f"{w}x{h}")
    try:
        full = _exif_size(img, (w, h))
        if getattr(img, "is_animated", False):
            img.seek(0)  # animated GIF/WebP/PNG: classify the first frame
        _reduce_early(img, min_side)
        with codec_messages.capture() as problems:
            img.load()
        if problems:
            # A libtiff warning means pixels are missing or made up: not good data.
            raise ImageError(f"{name}: truncated or corrupt image data "
                             f"({'; '.join(problems)})")
        img = ImageOps.exif_transpose(img) or img
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb(name, exc) from None
    except Exception as exc:  # any failure of one file's decoder is that file's error
        raise ImageError(f"{name}: truncated or corrupt image data ({_reason(exc)})") from None
    return img, full


def _from_array(arr: np.ndarray) -> Image.Image:
    """HxW grayscale or HxWx3/HxWx4 RGB(A) array -> PIL image."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(
            f"<ndarray>: shape {arr.shape} is not HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA)"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"<ndarray>: image has no pixels (shape {arr.shape})")
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise _too_large("<ndarray>", f"{arr.shape[1]}x{arr.shape[0]}")
    if arr.dtype == np.uint8:
        u8 = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ImageError("<ndarray>: contains NaN or infinite values")
        # Floats are taken as [0, 1] when they fit there, else as 0..255.
        scale = 255.0 if arr.size and float(arr.max()) <= 1.0 else 1.0
        u8 = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    elif arr.dtype == np.uint16:
        u8 = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        u8 = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        raise ImageError(f"<ndarray>: unsupported dtype {arr.dtype}")
    return Image.fromarray(np.ascontiguousarray(u8))


def load_image(source: ImageInput) -> Image.Image:
    """Read a path, PIL image or numpy array into a decoded PIL image.

    Args:
        source: File path, ``PIL.Image.Image``, ``np.ndarray`` (HxW gray,
            HxWx3 RGB, HxWx4 RGBA; uint8, uint16, or floats in [0, 1]), or
            an :class:`EncodedImage` (a file's bytes, decoded as the file).

    Returns:
        A fully decoded image with EXIF orientation applied.

    Raises:
        ImageError: The file is missing, empty, not an image, truncated,
            too large, or the array has an unusable shape or dtype.

    Example:
        >>> from PIL import Image
        >>> load_image(Image.new("RGB", (4, 2))).size
        (4, 2)
    """
    return load_reduced(source)[0]


def load_reduced(source: ImageInput,
                 min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`load_image`, decoding large JPEG files at a reduced scale when allowed.

    Args:
        source: As for :func:`load_image`.
        min_side: ``None``: full size. Otherwise a JPEG file of more than
            :data:`REDUCE_ABOVE_PIXELS` pixels is decoded by libjpeg at 1/2,
            1/4 or 1/8 scale, the smallest keeping both sides >= ``min_side``
            (faster, and a quarter to a 64th of the memory).

    Returns:
        The decoded image, and the full (width, height) of the source after
        EXIF orientation (larger than the image's only when it was reduced).

    Raises:
        ImageError: As :func:`load_image`.

    Example:
        >>> img, full = load_reduced(np.zeros((3, 5), np.uint8), min_side=1)
        >>> img.size, full
        ((5, 3), (5, 3))
    """
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), min_side)
    if isinstance(source, EncodedImage):
        return _open_encoded(source, min_side)
    if isinstance(source, Image.Image):
        return _decode(source, "<PIL.Image>")
    if isinstance(source, np.ndarray):
        img = _from_array(source)
        return img, img.size
    raise ImageError(
        f"{_describe(source)}: unsupported input type; give a path, a PIL image or a numpy array"
    )


#: Rows converted at a time by :func:`_scaled_to_u8`.
_ROWS_PER_STEP = 256


def _scaled_to_u8(arr: np.ndarray, factor: float) -> np.ndarray:
    """``rint(arr * factor)`` clipped to uint8, a few rows at a time.

    Row blocks in float32 keep the temporary small: a 49 MP 16-bit image
    converted at once through float64 needed ~1 GB more. For 16-bit input
    float32 rounds exactly as float64 (x/257 is never within 2e-3 of a .5).
    """
    out = np.empty(arr.shape, dtype=np.uint8)
    for top in range(0, arr.shape[0], _ROWS_PER_STEP):
        rows = arr[top:top + _ROWS_PER_STEP].astype(np.float32)
        rows *= np.float32(factor)
        np.rint(rows, out=rows)
        np.clip(rows, 0, 255, out=rows)
        out[top:top + _ROWS_PER_STEP] = rows
    return out


#: The largest value of Pillow's 32-bit integer mode "I".
_INT32_MAX = 2**31 - 1


def _white_level(mode: str, arr: np.ndarray) -> float:
    """The value that becomes white (255) when a 16-bit, 32-bit or float image is made 8-bit.

    The smallest usual range that holds the image's largest value: 16-bit
    modes 65535; mode "I" (8-bit, a 16-bit PNG read as "I", or a 32-bit
    integer TIFF) 255, 65535 or 2**31 - 1; mode "F" 1.0, 255 or 65535.
    """
    if mode.startswith("I;16"):
        return 65535.0
    top = float(arr.max()) if arr.size else 0.0
    if mode == "F" and top <= 1.0:
        return 1.0
    if top <= 255:
        return 255.0
    return 65535.0 if top <= 65535 or mode == "F" else float(_INT32_MAX)


def to_gray(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit luma ("L").

    16-bit, 32-bit integer and float modes are scaled to 8 bits rather than
    clipped (see :func:`_white_level`); alpha is dropped (the colour under it
    is kept); CMYK, palette and LAB go via RGB.
    """
    mode = img.mode
    if mode == "L":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        return Image.fromarray(_scaled_to_u8(arr, 255.0 / _white_level(mode, arr)), mode="L")
    if mode in ("1", "LA", "La"):
        return img.convert("L")
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
    return img.convert("RGB").convert("L")


def resize_gray(img: Image.Image, size: int) -> np.ndarray:
    """Grayscale, then resize to ``size`` x ``size`` with Pillow's bilinear filter.

    Face crops are (near) square; a non-square image is stretched, not padded,
    which is what training saw for its square 48x48 crops.

    Returns:
        uint8 array of shape (size, size).
    """
    gray = to_gray(img)
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def normalize(gray: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (..., S, S) grayscale -> float32 (..., 3, S, S) model input.

    Works on one image or a stack of images (leading batch axes).
    """
    x = gray.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    return ((x[..., None, :, :] - mean) / std).astype(np.float32)


def checked_gray(img: Image.Image, size: int, name: str = "<image>") -> np.ndarray:
    """:func:`resize_gray`, raising :class:`ImageError` naming ``name`` on failure.

    Pillow cannot convert every mode it can decode (e.g. some LAB or
    multi-band TIFFs); that is a property of the input, so it is an ImageError.

    Example:
        >>> checked_gray(Image.new("CMYK", (5, 3)), 4).shape
        (4, 4)
    """
    try:
        return resize_gray(img, size)
    except Exception as exc:  # any failure on one image's pixels is that image's error
        raise ImageError(f"{name}: cannot convert {img.mode} image to grayscale "
                         f"({_reason(exc)})") from None


def preprocess_gray(source: ImageInput, size: int) -> np.ndarray:
    """Load any supported input and return its uint8 (size, size) grayscale."""
    return checked_gray(load_image(source), size, _describe(source))


def preprocess(source: ImageInput, spec: PreprocessSpec) -> np.ndarray:
    """Load and preprocess one image into the float32 (3, S, S) model input."""
    return normalize(preprocess_gray(source, spec.input_size), spec)
