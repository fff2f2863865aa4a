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
from tests.constants import REPO


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
         error=r"bomb\.png: refused, image too large: 10,000,000,000 pixels exceeds the "
               r"50,000,000-pixel limit"),
    Case("over the 50-megapixel limit", _bytes("big.png", _png_header(8000, 8000)),
         error=r"big\.png: refused, image too large: 8000x8000 pixels exceeds the "
               r"50,000,000-pixel limit"),
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


# -- round two (issue 17): decoders, formats, memory, output, signals, names --------


def _save(path: Path, img: Image.Image | None = None, **params) -> Path:
    (img or _noise((48, 48))).save(path, **params)
    return path


def test_any_decoder_exception_is_that_files_error_and_the_batch_goes_on(tmp_path, classifier,
                                                                        monkeypatch):
    good, odd = _save(tmp_path / "good.png"), _save(tmp_path / "odd.png")
    from PIL import ImageFile

    real_load = ImageFile.ImageFile.load

    def load(self):  # a plugin raising what Pillow's own code does not expect
        if str(self.filename).endswith("odd.png"):
            raise NotImplementedError("Unimplemented pixel format")
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(ImageError, match=r"odd\.png: .*NotImplementedError: Unimplemented"):
        load_image(odd)
    results = classifier.analyze_batch([good, odd, good], errors="record")
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error.startswith(str(odd))


def test_formats_outside_the_allow_list_are_refused_by_content(tmp_path):
    dds = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 90, 90)).save(dds, "DDS")
    path = tmp_path / "texture.jpg"
    path.write_bytes(dds.getvalue())
    with pytest.raises(ImageError, match=r"texture\.jpg: not a readable image \(content is not JPEG"):
        load_image(path)


def test_postscript_named_jpg_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    path = tmp_path / "holiday.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 48 48\n"
                     b"newpath 0 0 moveto 48 48 lineto stroke showpage\n%%EOF\n")
    with pytest.raises(ImageError, match=r"holiday\.jpg: not a readable image"):
        load_image(path)
    assert calls == []


def test_folder_walk_takes_exactly_the_decoded_formats():
    from fer_edge.files import IMAGE_EXTENSIONS
    from fer_edge.preprocess import RASTER_FORMATS

    registered = Image.registered_extensions()
    assert {registered[ext] for ext in IMAGE_EXTENSIONS} == set(RASTER_FORMATS)
    assert not {".eps", ".ps", ".pdf", ".dds", ".psd", ".h5", ".wmf"} & IMAGE_EXTENSIONS


def test_fuzzed_files_of_every_walked_format_raise_only_image_errors(tmp_path):
    from benchmarks import fuzz_decode

    report = fuzz_decode.run(cases=3000, seed=17, folder=tmp_path)
    assert report.failures == []
    # Both outcomes occur, so the mutations reach the decoders and not only the header check.
    assert report.decoded > 100 and report.refused > 100


def test_batch_keeps_only_model_size_crops(tmp_path, model_path, monkeypatch):
    import gc
    import weakref

    from fer_edge import Classifier
    from fer_edge import classifier as classifier_module

    paths = [_save(tmp_path / f"{i}.png", _noise((300, 200), seed=i)) for i in range(4)]
    clf = Classifier(model_path, providers="cpu", batch_size=4)
    decoded: list[weakref.ref] = []
    real_load, real_classify = classifier_module.load_reduced, Classifier._classify

    def load(source, min_side=None):
        img, full = real_load(source, min_side)
        decoded.append(weakref.ref(img))
        return img, full

    def classify(self, grays):
        gc.collect()
        assert [ref() for ref in decoded] == [None] * len(decoded), "decoded images kept"
        return real_classify(self, grays)

    monkeypatch.setattr(classifier_module, "load_reduced", load)
    monkeypatch.setattr(Classifier, "_classify", classify)
    assert all(r.ok for r in clf.analyze_batch(paths, faces="off"))
    assert len(decoded) == 4


def test_large_jpeg_is_decoded_reduced_and_reported_full_size(tmp_path, classifier,
                                                              monkeypatch):
    from fer_edge import preprocess

    monkeypatch.setattr(preprocess, "REDUCE_ABOVE_PIXELS", 10_000)
    path = _save(tmp_path / "photo.jpg", Image.new("L", (400, 304), 90), quality=90)
    img, full = preprocess.load_reduced(path, min_side=32)
    assert img.size == (50, 38) and full == (400, 304)  # libjpeg's 1/8 scale
    [result] = classifier.analyze_batch([path], faces="off")
    assert (result.width, result.height) == (400, 304)
    assert result.faces[0].box == (0, 0, 400, 304)


def test_16_bit_images_are_converted_without_float64_copies():
    import tracemalloc

    from fer_edge.preprocess import to_gray

    img = Image.frombytes("I;16", (2000, 1000), np.full((1000, 2000), 30 * 257, "<u2").tobytes())
    tracemalloc.start()
    try:
        gray = to_gray(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.asarray(gray).min() == np.asarray(gray).max() == 30
    # One float64 copy alone is 16 MB (the old code made two); the uint16 pixels,
    # the uint8 result and one float32 row block are 8 MB.
    assert peak < 12_000_000, peak


def _invoke(*args: str, model: Path):
    from click.testing import CliRunner

    from fer_edge.cli import cli

    return CliRunner().invoke(cli, [*args, "--model", str(model)], catch_exceptions=False)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX")
@pytest.mark.parametrize("kind", ["fifo", "symlink", "device"])
def test_force_replaces_only_regular_files(tmp_path, model_path, kind):
    face = _save(tmp_path / "face.png")
    target = tmp_path / "out.json"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        (tmp_path / "elsewhere.json").write_text("keep")
        os.symlink(tmp_path / "elsewhere.json", target)
    else:
        try:
            os.mknod(target, 0o600 | __import__("stat").S_IFCHR, os.makedev(1, 3))  # like /dev/null
        except PermissionError:
            pytest.skip("creating a device node needs root")
    before = os.lstat(target)
    r = _invoke("classify", str(face), "-o", str(target), "--force", model=model_path)
    assert r.exit_code == 2, r.output
    assert "--force replaces only regular files" in r.stderr
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_stop_signals_remove_the_temporary_file_and_exit_128_plus_n(tmp_path, model_path,
                                                                   sig, code):
    import signal

    folder = tmp_path / "many"
    folder.mkdir()
    first = _save(folder / "0.png", Image.new("L", (8, 8), 7))
    for i in range(1, 20_000):  # hard links: a long run, cheap to set up
        os.link(first, folder / f"{i}.png")
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "fer_edge", "classify", str(folder), "-o",
                             str(out), "--model", str(model_path), "--format", "jsonl",
                             "--faces", "off", "--batch-size", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # A suite started in the background (``pytest &``) inherits an
                            # ignored SIGINT, and one under ``nohup`` an ignored SIGHUP, which
                            # fer-edge rightly keeps ignored: give the child the disposition a
                            # user's terminal would.
                            preexec_fn=lambda: signal.signal(getattr(signal, sig), signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.jsonl.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(getattr(signal, sig))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert f"fer-edge: stopped by {sig}".encode() in stderr and b"Traceback" not in stderr
    assert list(tmp_path.glob(".out.jsonl.*")) == [] and not out.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="control characters in file names")
def test_control_characters_in_names_are_escaped_everywhere(tmp_path, model_path):
    d = tmp_path / "in"
    d.mkdir()
    _save(d / "new\nline.png")
    (d / "evil\x1b]0;pwned\x07\x1b[2J.jpg").write_bytes(b"junk")
    (d / "broken\nrow.jpg").write_bytes(b"junk")
    for fmt in ("table", "csv", "jsonl"):
        r = _invoke("classify", str(d), "--format", fmt, model=model_path)
        assert r.exit_code == 1
        for text in (r.stdout, r.stderr):
            assert "\x1b" not in text and "\x07" not in text
        shown = r.stdout.replace("\\\\", "\\")  # JSON doubles the backslash of the escape
        assert "new\\nline.png" in shown and "evil\\x1b]0;pwned\\x07\\x1b[2J.jpg" in r.stderr
        errors = r.stderr.splitlines()
        assert len(errors) == 2 and all(e.startswith("fer-edge: error: ") for e in errors)
        if fmt == "table":
            assert len(r.stdout.splitlines()) == 1 + 3  # header + one row per file
        if fmt == "jsonl":
            assert len(r.stdout.splitlines()) == 3


def test_csv_cells_that_could_be_formulas_are_neutralised(tmp_path, make_model, monkeypatch):
    import csv as csv_module

    model = make_model(tmp_path, ["=1+1", "@SUM(A1)"])
    monkeypatch.chdir(tmp_path)
    _save(tmp_path / "=cmd|' -C calc'!A0.png")
    (tmp_path / "+bad.jpg").write_bytes(b"junk")
    (tmp_path / "-dash.jpg").write_bytes(b"junk")
    r = _invoke("classify", ".", "--format", "csv", model=model)
    assert r.exit_code == 1
    rows = list(csv_module.DictReader(io.StringIO(r.stdout)))
    assert sorted(row["path"] for row in rows) == ["'+bad.jpg", "'-dash.jpg",
                                                   "'=cmd|' -C calc'!A0.png"]
    labelled = [row for row in rows if row["label"]]
    assert labelled and all(row["label"] in ("'=1+1", "'@SUM(A1)") for row in labelled)
    assert all(row["error"].startswith("'") for row in rows if row["error"])


def test_jpeg_whose_header_lies_about_its_size_is_an_error(tmp_path):
    data = bytearray(_encoded(_noise((48, 48), "L"), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 7000, 7000)
    path = tmp_path / "liar.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"liar\.jpg: truncated or corrupt image data "
                                         r"\(header says 7000x7000"):
        load_image(path)


def test_corrupt_jpeg_inside_a_tiff_is_an_error_and_prints_nothing(tmp_path, capfd):
    data = bytearray(_encoded(_noise((64, 64)), "TIFF", compression="jpeg"))
    for i in range(450, 500):  # inside the JPEG strip: libjpeg warns, libtiff goes on
        data[i] ^= 0x55
    path = tmp_path / "scan.tif"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"scan\.tif: truncated or corrupt image data "
                                         r"\(JPEGLib: "):
        load_image(path)
    assert capfd.readouterr().err == ""  # libtiff's own stderr line is captured


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_is_named_not_an_internal_error(tmp_path, model_path, monkeypatch):
    face = _save(tmp_path / "face.png")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "fer_edge", "classify", str(face),
                               "--model", str(model_path)], stdout=full, stderr=subprocess.PIPE,
                              timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.decode().splitlines() == [
        "Error: cannot write standard output: no space left on device"]
    # -o: the temporary file is on a full disk.
    out = tmp_path / "out.json"
    monkeypatch.setattr("fer_edge.atomic._open_temporary", lambda tmp: os.open("/dev/full", os.O_WRONLY))
    r = _invoke("classify", str(face), "-o", str(out), model=model_path)
    assert r.exit_code == 1
    assert f"cannot write {out}: no space left on device" in r.stderr


def test_empty_path_is_a_usage_error(model_path):
    r = _invoke("classify", "", model=model_path)
    assert r.exit_code == 2 and "an empty path names no file or folder" in r.stderr


@pytest.mark.parametrize("field, value", [("mean", float("nan")), ("std", float("inf"))])
def test_nan_or_infinite_normalisation_is_refused_at_load(field, value):
    from fer_edge import ModelError
    from fer_edge.metadata import ModelInfo
    from fer_edge.preprocess import PreprocessSpec

    record = json.loads(ModelInfo(["a", "b"], PreprocessSpec()).to_json())
    record["preprocess"][field] = [0.5, value, 0.5]
    with pytest.raises(ModelError, match="mean and std must be finite"):
        ModelInfo.from_props({"fer_edge": json.dumps(record)}, "m.onnx")


def test_file_created_at_the_output_path_during_the_run_keeps_both(tmp_path, model_path,
                                                                    monkeypatch):
    from fer_edge import Classifier

    face = _save(tmp_path / "face.png")
    out = tmp_path / "out.json"
    real = Classifier.analyze_iter

    def analyze_iter(self, *args, **kwargs):
        out.write_text("someone else's")  # appears while fer-edge is classifying
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Classifier, "analyze_iter", analyze_iter)
    r = _invoke("classify", str(face), "-o", str(out), "--format", "json", model=model_path)
    assert r.exit_code == 1
    kept = tmp_path / "out-1.json"
    assert f"{out}: appeared while writing" in r.stderr and f"results are in {kept}" in r.stderr
    assert out.read_text() == "someone else's"
    assert json.loads(kept.read_text())[0]["path"] == str(face)


def test_classifier_survives_pickling_and_spawn_workers(model_path, tmp_path):
    import multiprocessing
    import pickle

    from fer_edge import Classifier

    clf = Classifier(model_path, providers="cpu", batch_size=2)
    face = _save(tmp_path / "face.png")
    copy = pickle.loads(pickle.dumps(clf))
    assert copy.predict(face) == clf.predict(face)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(clf.predict, [face]) == [clf.predict(face)]


def test_one_atomic_writer_leaves_nothing_behind_on_failure(tmp_path):
    """fer_edge.atomic serves the CLI, export and train: a failed write keeps the old file."""
    from fer_edge.atomic import atomic_write, create_new, current_umask

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "wb") as f:
            f.write(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with pytest.raises(FileExistsError):
        with atomic_write(target, "wb", place=create_new) as f:
            f.write(b"new")
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1
    with atomic_write(target, "wb") as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~current_umask()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_stop_signal_right_after_the_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch):
    """The race a loaded machine hit: SIGTERM between creating the file and the clean-up's ``try``."""
    import signal

    from fer_edge import atomic
    from fer_edge.cli import Stopped, _raise_stopped

    real_open = atomic._open_temporary

    def open_then_signalled(tmp):
        fd = real_open(tmp)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises before the descriptor is returned
        return fd

    monkeypatch.setattr(atomic, "_open_temporary", open_then_signalled)
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        with pytest.raises(Stopped):
            with atomic.atomic_write(tmp_path / "out.json") as f:
                f.write("never finished")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert list(tmp_path.iterdir()) == []


def test_atomic_writer_never_removes_a_file_it_did_not_make(tmp_path, monkeypatch):
    from fer_edge import atomic

    taken = tmp_path / ".out.json.taken.tmp"
    taken.write_text("another writer's")
    def only_taken_names(path):  # as the real generator ends when every name is taken
        yield taken
        raise FileExistsError(17, f"no free temporary file name next to {path}")

    monkeypatch.setattr(atomic, "_temporary_names", only_taken_names)
    with pytest.raises(FileExistsError, match="no free temporary file name"):
        with atomic.atomic_write(tmp_path / "out.json") as f:
            f.write("x")
    assert taken.read_text() == "another writer's"
    monkeypatch.undo()
    with pytest.raises(ValueError):  # a bad mode: the descriptor is closed, the file removed
        with atomic.atomic_write(tmp_path / "out.json", "nonsense"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [taken.name]
