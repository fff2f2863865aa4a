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

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError

#: What :func:`load_image` accepts.
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

#: Images with more pixels than this are refused before decoding (decompression
#: bombs). 50 megapixels covers any real camera photo of a face.
MAX_PIXELS = 50_000_000

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
    def from_dict(cls, d: dict) -> "PreprocessSpec":
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
    return f"<{type(source).__name__}>"


def _open_path(path: Path) -> Image.Image:
    """Open and fully decode an image file, refusing bombs before decoding."""
    name = os.fsdecode(path)
    try:
        # Inside the try: stat() itself fails with EACCES in a folder we may not search.
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
        img = Image.open(path)
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused, image too large ({exc})") from None
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc})") from None
    return _decode(img, name)


def _decode(img: Image.Image, name: str) -> Image.Image:
    """Check the header's size, then decode pixels and apply EXIF orientation."""
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        # Checked on the header, before load(), so nothing big is allocated.
        raise ImageError(f"{name}: refused, {w}x{h} exceeds the {MAX_PIXELS:,}-pixel limit")
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)  # animated GIF/WebP/PNG: classify the first frame
        img.load()
        img = ImageOps.exif_transpose(img) or img
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused, image too large ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, ZeroDivisionError,
            struct.error) as exc:
        raise ImageError(f"{name}: truncated or corrupt image data ({exc})") from None
    return img


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
        raise ImageError(f"<ndarray>: {arr.shape[1]}x{arr.shape[0]} exceeds the pixel limit")
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
        source: File path, ``PIL.Image.Image``, or ``np.ndarray`` (HxW gray,
            HxWx3 RGB, HxWx4 RGBA; uint8, uint16, or floats in [0, 1]).

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
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source))
    if isinstance(source, Image.Image):
        return _decode(source, "<PIL.Image>")
    if isinstance(source, np.ndarray):
        return _from_array(source)
    raise ImageError(
        f"{_describe(source)}: unsupported input type; give a path, a PIL image or a numpy array"
    )


def to_gray(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit luma ("L").

    16-bit and float modes are scaled to 8 bits rather than clipped; alpha is
    dropped (the colour under it is kept); CMYK, palette and LAB go via RGB.
    """
    mode = img.mode
    if mode == "L":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
        if mode == "F" and arr.size and arr.max() <= 1.0:
            hi = 1.0
        arr = np.clip(np.rint(arr * (255.0 / hi)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L")
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
        gray = gray.resize((size, size), Image.BILINEAR)
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
    except (ValueError, OSError, TypeError, KeyError, MemoryError) as exc:
        raise ImageError(f"{name}: cannot convert {img.mode} image to grayscale ({exc})") from None


def preprocess_gray(source: ImageInput, size: int) -> np.ndarray:
    """Load any supported input and return its uint8 (size, size) grayscale."""
    return checked_gray(load_image(source), size, _describe(source))


def preprocess(source: ImageInput, spec: PreprocessSpec) -> np.ndarray:
    """Load and preprocess one image into the float32 (3, S, S) model input."""
    return normalize(preprocess_gray(source, spec.input_size), spec)
