"""Fuzz the image loader: mutated files of every format the folder walk accepts.

The property: loading any bytes either gives an image or raises
:class:`fer_edge.ImageError` naming the file, never another exception. Seeds
are small valid files of each of :data:`fer_edge.preprocess.RASTER_FORMATS`
(several modes and compressions); each case mutates one (flipped bytes,
overwritten header fields, cut short, bytes inserted) and loads it.

Example:
    python -m benchmarks.fuzz_decode --cases 50000 --seed 1

tests/test_hostile.py runs a few thousand cases of the same generator.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fer_edge import ImageError
from fer_edge.preprocess import RASTER_FORMATS, preprocess_gray


def _encoded(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def seed_files() -> dict[str, bytes]:
    """Small valid files, named ``FORMAT/variant``, covering every raster format."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    grey, bilevel = rgb.convert("L"), rgb.convert("1")
    grey16 = Image.frombytes("I;16", (16, 12), rng.integers(0, 65536, 192, "<u2").tobytes())
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    seeds = {
        "JPEG/rgb": _encoded(rgb, "JPEG"), "JPEG/progressive": _encoded(rgb, "JPEG", progressive=True),
        "JPEG/cmyk": _encoded(rgb.convert("CMYK"), "JPEG"),
        "JPEG/exif": _encoded(rgb, "JPEG", exif=Image.Exif().tobytes()),
        "PNG/rgba": _encoded(rgb.convert("RGBA"), "PNG"), "PNG/grey16": _encoded(grey16, "PNG"),
        "PNG/palette": _encoded(rgb.convert("P"), "PNG"),
        "PNG/animated": _encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "GIF/animated": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "BMP/rgb": _encoded(rgb, "BMP"), "BMP/bilevel": _encoded(bilevel, "BMP"),
        "TIFF/raw": _encoded(rgb, "TIFF"), "TIFF/jpeg": _encoded(rgb, "TIFF", compression="jpeg"),
        "TIFF/lzw": _encoded(rgb, "TIFF", compression="tiff_lzw"),
        "TIFF/packbits": _encoded(grey, "TIFF", compression="packbits"),
        "TIFF/group4": _encoded(bilevel, "TIFF", compression="group4"),
        "WEBP/lossy": _encoded(rgb, "WEBP"), "WEBP/lossless": _encoded(rgb, "WEBP", lossless=True),
        "WEBP/animated": _encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "PPM/rgb": _encoded(rgb, "PPM"), "PPM/grey": _encoded(grey, "PPM"),
        "TGA/rle": _encoded(rgb, "TGA", compression="tga_rle"), "TGA/raw": _encoded(grey, "TGA"),
    }
    missing = set(RASTER_FORMATS) - {name.split("/")[0] for name in seeds}
    assert not missing, f"no fuzz seed for {sorted(missing)}"
    return seeds


def _mutate_once(out: bytearray, rng: random.Random) -> None:
    """One mutation in place: the kinds real corrupt files show."""
    kind = rng.randrange(4)
    if kind == 0:  # a few random bytes anywhere
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 1:  # a header field (sizes, offsets, counts) set to an extreme
        at = rng.randrange(min(len(out), 64))
        out[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                     b"\x7f\xff\xff\xff", rng.randbytes(4)])
    elif kind == 2 and len(out) > 1:  # cut short
        del out[rng.randint(1, len(out) - 1):]
    else:  # bytes inserted
        at = rng.randrange(len(out))
        out[at:at] = rng.randbytes(rng.randint(1, 32))


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one to four random mutations, at most 4 KiB."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
        _mutate_once(out, rng)
    return bytes(out[:4096])


@dataclass
class Report:
    """What a fuzz run found."""

    cases: int = 0
    decoded: int = 0
    refused: int = 0
    seconds: float = 0.0
    #: (seed name, exception type, message) for every property violation.
    failures: list[tuple[str, str, str]] = field(default_factory=list)


def _load_one(path: Path, seed: str, report: Report) -> None:
    try:
        preprocess_gray(path, 32)
    except ImageError as exc:
        report.refused += 1
        if not str(exc).startswith(os.fsdecode(path)):
            report.failures.append((seed, "ImageError without the path", str(exc)))
    except Exception as exc:  # noqa: BLE001 - the property under test
        report.failures.append((seed, type(exc).__name__, str(exc)))
    else:
        report.decoded += 1


def run(cases: int, seed: int = 0, folder: Path | None = None) -> Report:
    """Load ``cases`` mutated files; returns the counts and every violation."""
    rng = random.Random(seed)
    seeds = sorted(seed_files().items())
    report = Report()
    # Pillow logs some refusals itself ("More samples per pixel..."); the
    # ImageError says it with the file name, which is what is checked here.
    logging.getLogger("PIL").addHandler(logging.NullHandler())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder) as tmp, warnings.catch_warnings():
        # Pillow warns about odd files; the property is about exceptions.
        warnings.simplefilter("ignore")
        path = Path(tmp) / "case.img"
        for _ in range(cases):
            name, data = rng.choice(seeds)
            path.write_bytes(mutate(data, rng))
            _load_one(path, name, report)
            report.cases += 1
    report.seconds = time.perf_counter() - start
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: run, print a summary and the first violations; 1 if any."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz_decode",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20_000, help="files to load (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    args = parser.parse_args(argv)
    report = run(args.cases, args.seed)
    print(f"{report.cases} cases in {report.seconds:.1f} s "
          f"({report.cases / max(report.seconds, 1e-9):.0f}/s): {report.decoded} decoded, "
          f"{report.refused} refused with ImageError, {len(report.failures)} violations")
    for seed, kind, message in report.failures[:20]:
        print(f"  {seed}: {kind}: {message}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
