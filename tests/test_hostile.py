"""Hostile and awkward inputs: nothing crashes, nothing is lost, every failure is named.

Each test writes its own files. One parametrised case per input kind, run
through the Python API; then the same folder through the real ``fer-edge``
process; then a hypothesis property test on arbitrary and mutated bytes.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fer_edge import FerEdgeError, ImageError
from fer_edge.preprocess import load_image, preprocess_gray

REPO = Path(__file__).resolve().parents[1]


def _noise(size=(64, 64), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr[:, :, 0] if channels == 1 else arr)


def _encoded(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that is only a valid header claiming width x height 8-bit grey pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@dataclass(frozen=True)
class Case:
    """One input kind: how to write it, and the expected outcome."""

    name: str
    write: Callable[[Path], Path]
    error: str | None = None  # regex of the ImageError message; None: must classify
    grey: int | None = None  # expected mean grey of the preprocessed image, if known
    size: tuple[int, int] | None = None  # expected (width, height) after EXIF


def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name
    return write


def _image(name: str, img_fn: Callable[[], Image.Image], **params) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        img_fn().save(d / name, **params)
        return d / name
    return write


def _grey16() -> Image.Image:
    return Image.frombytes("I;16", (20, 20), np.full((20, 20), 100 * 257, "<u2").tobytes())


def _palette_with_transparency() -> Image.Image:
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 100, 100, 100] + [0] * 762)
    img.info["transparency"] = 0
    return img


def _animated_gif(d: Path) -> Path:
    frames = [Image.new("L", (24, 24), 200), Image.new("L", (24, 24), 10)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return d / "anim.gif"


def _exif_rotated(d: Path) -> Path:
    # 40x20, left half black, right half white, EXIF orientation 6 (rotate 90 CW).
    img = Image.new("L", (40, 20), 0)
    img.paste(255, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(d / "rotated.jpg", exif=exif.tobytes(), quality=95)
    return d / "rotated.jpg"


def _folder_named_jpg(d: Path) -> Path:
    (d / "folder.jpg").mkdir()
    return d / "folder.jpg"


JPEG = _encoded(_noise(), "JPEG", quality=90)
PNG = _encoded(_noise(), "PNG")

CASES = [
    Case("empty file", _bytes("empty.jpg", b""), error=r"empty\.jpg: empty file"),
    Case("truncated JPEG", _bytes("trunc.jpg", JPEG[: len(JPEG) // 2]),
         error=r"trunc\.jpg: truncated or corrupt"),
    Case("truncated PNG", _bytes("trunc.png", PNG[: len(PNG) * 6 // 10]),
         error=r"trunc\.png: truncated or corrupt"),
    Case("text with image extension", _bytes("notes.png", b"shopping list: eggs\n"),
         error=r"notes\.png: not a readable image"),
    Case("random bytes", _bytes("random.jpg", np.random.default_rng(3).bytes(4096)),
         error=r"random\.jpg: not a readable image"),
    Case("decompression bomb 100000x100000", _bytes("bomb.png", _png_header(100_000, 100_000)),
         error=r"bomb\.png: refused, image too large"),
    Case("over the 50-megapixel limit", _bytes("big.png", _png_header(8000, 8000)),
         error=r"big\.png: refused, 8000x8000 exceeds the 50,000,000-pixel limit"),
    Case("directory named .jpg", _folder_named_jpg, error=r"folder\.jpg: is a directory"),
    Case("missing file", lambda d: d / "nowhere.png", error=r"nowhere\.png: no such file"),
    Case("CMYK JPEG", _image("cmyk.jpg", lambda: Image.new("CMYK", (20, 20), (0, 0, 0, 155))),
         grey=100),
    Case("16-bit PNG", _image("grey16.png", _grey16), grey=100),
    Case("RGBA PNG", _image("rgba.png", lambda: Image.new("RGBA", (20, 20), (100, 100, 100, 0))),
         grey=100),
    Case("palette PNG with transparency", _image("palette.png", _palette_with_transparency),
         grey=100),
    Case("animated GIF (first frame)", _animated_gif, grey=200),
    Case("WebP", _image("x.webp", lambda: Image.new("RGB", (20, 20), (100, 100, 100)),
                        lossless=True), grey=100),
    Case("BMP", _image("x.bmp", lambda: Image.new("RGB", (20, 20), (100, 100, 100))), grey=100),
    Case("TIFF", _image("x.tif", lambda: Image.new("RGB", (20, 20), (100, 100, 100))), grey=100),
    Case("1x1", _image("dot.png", lambda: Image.new("L", (1, 1), 100)), grey=100, size=(1, 1)),
    Case("1x3000", _image("tall.png", lambda: Image.new("L", (1, 3000), 100)), grey=100,
         size=(1, 3000)),
    Case("3000x1", _image("wide.png", lambda: Image.new("L", (3000, 1), 100)), grey=100,
         size=(3000, 1)),
    Case("EXIF-rotated JPEG", _exif_rotated, size=(20, 40)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_input_kind(case, tmp_path, classifier):
    path = case.write(tmp_path)
    [result] = classifier.analyze_batch([path], faces="off", errors="record")
    if case.error:
        assert not result.ok
        assert result.error.startswith(str(path)), result.error
        with pytest.raises(ImageError, match=case.error):
            load_image(path)
        return
    assert result.ok, result.error
    assert len(result.faces) == 1
    if case.size:
        assert (result.width, result.height) == case.size
    if case.grey is not None:
        assert abs(float(preprocess_gray(path, 16).mean()) - case.grey) <= 2


def test_decompression_bomb_is_refused_without_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(100_000, 100_000))
    start = time.perf_counter()
    with pytest.raises(ImageError, match="too large"):
        load_image(path)
    assert time.perf_counter() - start < 1.0


def test_exif_orientation_is_applied(tmp_path):
    img = load_image(_exif_rotated(tmp_path))
    arr = np.asarray(img.convert("L"), dtype=float)
    assert img.size == (20, 40)
    # Rotating 90 degrees clockwise puts the black left half on top.
    assert arr[:20].mean() < 40 and arr[20:].mean() > 215


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    path = tmp_path / "secret.png"
    Image.new("L", (8, 8)).save(path)
    # chmod 000 stops reading only for non-root users on POSIX.
    chmod_blocks_reads = hasattr(os, "geteuid") and os.geteuid() != 0
    if chmod_blocks_reads:
        path.chmod(0)
    else:
        # Tests run as root here, and root reads mode-000 files anyway:
        # simulate the refusal at the point Pillow opens the file.
        real_open = Image.open

        def refuse(fp, *args, **kwargs):
            if Path(fp) == path:
                raise PermissionError(13, "Permission denied", str(fp))
            return real_open(fp, *args, **kwargs)

        monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageError, match=r"secret\.png: permission denied"):
        load_image(path)


# -- the whole folder through the real command ------------------------------------


def _hostile_folder(root: Path) -> tuple[Path, list[str], list[str]]:
    """Every case in one folder; returns (folder, paths that fail, paths that work)."""
    d = root / "in"
    d.mkdir()
    bad, good = [], []
    for case in CASES:
        if case.name in ("missing file",):
            continue
        path = case.write(d)
        if case.name == "directory named .jpg":
            # In a walk, a folder named *.jpg is walked, not opened: put a face in it.
            Image.new("L", (48, 48), 120).save(path / "inside.png")
            good.append(str(path / "inside.png"))
            continue
        (bad if case.error else good).append(str(path))
    (d / "README.txt").write_text("not an image, skipped in a folder walk")
    (d / ".hidden.jpg").write_bytes(b"macOS resource fork")
    os.symlink(d, d / "loop")  # symlink loop: must not walk forever
    os.symlink(d / "gone.png", d / "dangling.png")
    bad.append(str(d / "dangling.png"))
    return d, bad, good


def _run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fer_edge", *args], capture_output=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("faces", ["off", "auto"])
def test_real_command_on_a_hostile_folder(tmp_path, model_path, faces):
    folder, bad, good = _hostile_folder(tmp_path)
    proc = _run_cli("classify", str(folder), "--model", str(model_path), "--format", "json",
                    "--faces", faces)
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    records = json.loads(proc.stdout)
    by_path = {r["path"]: r for r in records}
    assert sorted(by_path) == sorted(bad + good)
    for path in bad:
        assert "error" in by_path[path] and by_path[path]["error"].startswith(path)
        assert sum(line.startswith("fer-edge: error: " + path) for line in stderr.splitlines()) == 1
    for path in good:
        record = by_path[path]
        assert "error" not in record
        if not record["detected"]:  # classified as a whole; detection may find no face
            assert record["label"] in ("happy", "sad"), record
    assert len(stderr.splitlines()) == len(bad)


def test_files_named_explicitly_are_always_attempted(tmp_path, model_path):
    (tmp_path / "face.txt").write_bytes(_encoded(Image.new("L", (48, 48), 90), "PNG"))
    (tmp_path / "notes.txt").write_text("hello")
    proc = _run_cli("classify", str(tmp_path / "face.txt"), str(tmp_path / "notes.txt"),
                    "--model", str(model_path), "--format", "jsonl")
    assert proc.returncode == 1
    face, notes = [json.loads(line) for line in proc.stdout.splitlines()]
    assert face["label"] in ("happy", "sad")
    assert "not a readable image" in notes["error"]


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="needs byte file names (POSIX)")
def test_file_names_that_are_not_utf8(tmp_path, model_path):
    d = tmp_path / "names"
    d.mkdir()
    raw = os.fsencode(d) + b"/caf\xe9.png"
    Image.new("L", (48, 48), 80).save(os.fsdecode(raw))
    with open(os.fsencode(d) + b"/bad\xff.jpg", "wb") as f:
        f.write(b"junk")
    for fmt in ("json", "csv", "table"):
        proc = _run_cli("classify", str(d), "--model", str(model_path), "--format", fmt)
        assert proc.returncode == 1, proc.stderr
        out = proc.stdout.decode("utf-8")  # valid UTF-8 whatever the names
        if fmt == "json":
            out = " ".join(r["path"] for r in json.loads(out))
        # The undecodable byte is shown as the 4 characters \xNN.
        assert "caf\\xe9.png" in out and "bad\\xff.jpg" in out
        assert b"Traceback" not in proc.stderr
        assert proc.stderr.decode("utf-8").count("bad\\xff.jpg") == 1


def test_debug_shows_the_traceback_otherwise_never(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"garbage")
    proc = _run_cli("classify", str(tmp_path), "--model", str(tmp_path / "m.onnx"))
    assert proc.returncode == 1
    assert b"not a loadable ONNX model" in proc.stderr and b"Traceback" not in proc.stderr
    proc = _run_cli("classify", str(tmp_path), "--model", str(tmp_path / "m.onnx"), "--debug")
    assert proc.returncode == 1 and b"Traceback" in proc.stderr


# -- property: any bytes at all ----------------------------------------------------


def _seed_files() -> list[bytes]:
    img = _noise((16, 12))
    return [
        _encoded(img, "PNG"), _encoded(img, "JPEG"), _encoded(img, "GIF"),
        _encoded(img, "BMP"), _encoded(img, "TIFF"), _encoded(img, "WEBP"),
        _encoded(_grey16(), "PNG"), _encoded(img.convert("CMYK"), "JPEG"),
        _encoded(img, "JPEG", exif=Image.Exif().tobytes()),
    ]


SEEDS = _seed_files()


@st.composite
def _mutated(draw) -> bytes:
    """A valid small image with a few bytes changed and maybe cut short."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hypothesis")


# Pillow warns about corrupt files and huge headers; the property is about exceptions.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=512), _mutated()),
       ext=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".tif", ".webp", ".bin"]))
def test_arbitrary_bytes_only_ever_raise_fer_edge_errors(data, ext, scratch, classifier):
    fd, name = tempfile.mkstemp(suffix=ext, dir=scratch)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    try:
        prediction = classifier.predict(name)
    except Exception as exc:  # the property: nothing but the package's own errors
        assert isinstance(exc, FerEdgeError), f"{type(exc).__name__}: {exc}"
    else:
        assert abs(sum(prediction.probabilities.values()) - 1) < 1e-6
    finally:
        os.unlink(name)


def test_file_in_a_folder_we_may_not_search_is_named(tmp_path, monkeypatch):
    path = tmp_path / "locked" / "face.png"
    path.parent.mkdir()
    Image.new("L", (8, 8)).save(path)
    # As root, chmod cannot forbid this: make stat() fail the way EACCES would.
    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    with pytest.raises(ImageError, match=r"face\.png: permission denied"):
        load_image(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_fifo_named_like_an_image_is_refused_not_read(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=r"pipe\.jpg: not a regular file"):
        load_image(fifo)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX symlinks")
def test_looping_symlink_named_explicitly(tmp_path):
    os.symlink("self.png", tmp_path / "self.png")
    with pytest.raises(ImageError, match=r"self\.png: broken or looping symbolic link"):
        load_image(tmp_path / "self.png")
