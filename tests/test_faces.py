"""Face detection, FER-style face crops and annotated output (fer_edge.faces / .annotate).

Control flow is tested on synthetic images without OpenCV; detection is tested
on a real photo (scikit-image's astronaut) when opencv-python-headless<5 and
scikit-image are installed, and skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fer_edge import annotate as annotate_mod
from fer_edge import faces
from fer_edge.annotate import annotate, annotated_path, save_annotated
from fer_edge.errors import DependencyError, FerEdgeError
from fer_edge.faces import FACE_MODES, FaceBox, crop_face, detect_faces, face_frame, needs_detection
from fer_edge.preprocess import to_gray

REPO = Path(__file__).resolve().parents[1]

# Where scikit-image's astronaut photo has its face (checked by eye on an
# annotated copy): centre and side of the face box, in pixels.
ASTRONAUT_FACE_CENTRE = (225, 114)
ASTRONAUT_FACE_SIDE = 97


def gradient(w: int, h: int) -> Image.Image:
    """An 'L' image whose pixels all differ along each axis (x + 2y mod 256)."""
    ys, xs = np.mgrid[0:h, 0:w]
    return Image.fromarray(((xs + 2 * ys) % 256).astype(np.uint8))


def result(box, label: str = "happy", score: float = 0.87) -> SimpleNamespace:
    return SimpleNamespace(box=box, label=label, score=score)


# --------------------------------------------------------------- needs_detection


@pytest.mark.parametrize(
    "size, expected",
    [
        ((48, 48), False),  # FER-2013 crop
        ((160, 160), False),  # largest side still taken as a crop
        ((128, 160), False),  # width/height 0.8: lower aspect limit, inclusive
        ((160, 128), False),  # 1.25: upper limit, inclusive
        ((161, 161), True),  # one pixel too big for a crop
        ((100, 126), True),  # aspect 0.79: too tall for a crop
        ((160, 120), True),  # 4:3 thumbnail is a photo format
        ((640, 480), True),
        ((1, 1), False),
    ],
)
def test_auto_rule(size, expected):
    assert needs_detection(Image.new("L", size), "auto") is expected


def test_on_and_off_ignore_size():
    assert needs_detection(Image.new("L", (48, 48)), "on") is True
    assert needs_detection(Image.new("L", (4000, 3000)), "off") is False


@pytest.mark.parametrize("mode", ["AUTO", "yes", "", None])
def test_bad_mode_lists_choices(mode):
    with pytest.raises(ValueError) as info:
        needs_detection(Image.new("L", (48, 48)), mode)
    for choice in FACE_MODES:
        assert repr(choice) in str(info.value)


# -------------------------------------------------------------------- crop_face


def test_frame_is_square_centred_and_uses_longer_side():
    left, top, side = face_frame(FaceBox(x=100, y=50, w=80, h=100))
    assert side == round(100 * faces.FRAME_SCALE)
    assert (left + side / 2, top + side / 2) == pytest.approx((140, 100), abs=0.5)


def test_crop_inside_image_is_the_plain_pixels():
    img = gradient(300, 200)
    box = FaceBox(x=100, y=60, w=80, h=80)
    left, top, side = face_frame(box)
    crop = crop_face(img, box)
    assert crop.size == (side, side) and crop.mode == "L"
    expected = np.asarray(img)[top : top + side, left : left + side]
    np.testing.assert_array_equal(np.asarray(crop), expected)


@pytest.mark.parametrize(
    "box",
    [
        FaceBox(x=0, y=0, w=60, h=60),  # top-left corner: frame starts at -1
        FaceBox(x=250, y=150, w=60, h=60),  # runs past right and bottom
        FaceBox(x=-30, y=-30, w=400, h=300),  # larger than the whole image
    ],
)
def test_crop_past_border_repeats_edge_pixels(box):
    img = gradient(300, 200)
    left, top, side = face_frame(box)
    crop = np.asarray(crop_face(img, box))
    assert crop.shape == (side, side)
    rows = np.clip(np.arange(top, top + side), 0, 199)
    cols = np.clip(np.arange(left, left + side), 0, 299)
    np.testing.assert_array_equal(crop, np.asarray(img)[rows[:, None], cols])


@pytest.mark.parametrize(
    "mode, out_mode",
    [("L", "L"), ("RGB", "RGB"), ("RGBA", "RGBA"), ("I;16", "I;16"), ("F", "F"), ("P", "RGBA")],
)
@pytest.mark.parametrize("box", [FaceBox(40, 30, 50, 50), FaceBox(-10, 150, 70, 70)])
def test_crop_luma_equals_luma_crop(mode, out_mode, box):
    """Cropping commutes with the preprocessing's grey conversion, in every mode."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (200, 160, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray((np.asarray(to_gray(rgb), dtype=np.uint16) * 257))
    elif mode == "F":
        img = Image.fromarray(np.asarray(to_gray(rgb), dtype=np.float32) / 255)
    elif mode == "P":
        img = rgb.quantize(64)
    else:
        img = rgb.convert(mode)
    crop = crop_face(img, box)
    assert crop.mode == out_mode
    assert np.abs(
        np.asarray(to_gray(crop), dtype=int) - np.asarray(crop_face(to_gray(img), box), dtype=int)
    ).max() <= 1  # 16-bit and float rescaling may round differently by one level


def test_crop_of_empty_box_is_refused():
    with pytest.raises(ValueError, match="no area"):
        crop_face(gradient(50, 50), FaceBox(10, 10, 0, 20))


# --------------------------------------------------------------------- annotate


def test_annotate_draws_on_an_rgb_copy_of_same_size():
    src = Image.new("L", (320, 240), 255)
    before = src.tobytes()
    out = annotate(src, [result(FaceBox(100, 80, 60, 60), "sad", 0.5)])
    assert out.mode == "RGB" and out.size == src.size and out is not src
    assert src.mode == "L" and src.tobytes() == before
    colour = annotate_mod._colour("sad")
    assert out.getpixel((100, 110)) == colour  # left edge of the box
    assert out.getpixel((130, 110)) == (255, 255, 255)  # inside the box: untouched
    assert out.getpixel((101, 75)) == colour  # the tag above the box


def test_annotate_accepts_tuple_boxes_and_whole_image_boxes():
    src = Image.new("RGB", (64, 64), (255, 255, 255))
    out = annotate(src, [result((0, 0, 64, 64))])
    colour = annotate_mod._colour("happy")
    assert out.getpixel((0, 40)) == colour and out.getpixel((63, 40)) == colour
    assert out.getpixel((2, 2)) == colour  # no room above: tag drawn inside the box


def test_annotate_without_faces_says_so():
    out = annotate(Image.new("RGB", (200, 100), (255, 255, 255)), [])
    assert out.getpixel((1, 1)) != (255, 255, 255)


def test_annotate_sixteen_bit_image_keeps_its_picture():
    src = Image.fromarray(np.full((50, 50), 256 * 100, dtype=np.uint16))
    out = annotate(src, [])
    assert out.getpixel((49, 49)) == (100, 100, 100)  # not clipped to white


def test_annotated_path_never_picks_an_existing_file(tmp_path):
    src = tmp_path / "team.jpg"
    src.write_bytes(b"x")
    first = annotated_path(src, tmp_path)
    assert first == tmp_path / "team.annotated.png"
    first.write_bytes(b"taken")
    second = annotated_path(src, tmp_path)
    assert second == tmp_path / "team.annotated-1.png"
    second.write_bytes(b"taken")
    assert annotated_path(src, tmp_path) == tmp_path / "team.annotated-2.png"


def test_annotated_path_differs_from_an_already_annotated_input(tmp_path):
    src = tmp_path / "team.annotated.png"
    src.write_bytes(b"x")
    out = annotated_path(src, tmp_path)
    assert out != src and not out.exists()


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_annotated_path_skips_dangling_symlink(tmp_path):
    (tmp_path / "a.annotated.png").symlink_to(tmp_path / "elsewhere.png")
    assert annotated_path("a.jpg", tmp_path).name == "a.annotated-1.png"


def test_annotated_path_needs_a_file_name(tmp_path):
    with pytest.raises(ValueError, match="no file name"):
        annotated_path("", tmp_path)


def test_save_annotated_creates_dir_and_never_overwrites(tmp_path):
    out_dir = tmp_path / "out"
    img = Image.new("RGB", (8, 8), (1, 2, 3))
    a = save_annotated(img, "dir1/x.jpg", out_dir)
    b = save_annotated(img, "dir2/x.jpg", out_dir)
    assert (a.name, b.name) == ("x.annotated.png", "x.annotated-1.png")
    with Image.open(b) as back:
        assert back.format == "PNG" and back.getpixel((0, 0)) == (1, 2, 3)


def test_save_annotated_loses_a_race_without_overwriting(tmp_path, monkeypatch):
    real = annotate_mod.annotated_path
    calls = []

    def racing(src, out_dir):
        path = real(src, out_dir)
        if not calls:  # another process creates the file right after the check
            path.write_bytes(b"theirs")
        calls.append(path)
        return path

    monkeypatch.setattr(annotate_mod, "annotated_path", racing)
    written = save_annotated(Image.new("RGB", (4, 4)), "x.jpg", tmp_path)
    assert calls[0].read_bytes() == b"theirs"
    assert written == tmp_path / "x.annotated-1.png"


# ------------------------------------------------------- missing OpenCV / import


@pytest.fixture
def fresh_cascade_cache(monkeypatch):
    """Forget any cascade this thread already loaded."""
    monkeypatch.setattr(faces, "_local", threading.local())


def test_missing_opencv_says_how_to_install(monkeypatch, fresh_cascade_cache):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` fail
    with pytest.raises(DependencyError) as info:
        detect_faces(Image.new("L", (100, 100)))
    assert "fer-edge[detect]" in str(info.value) and "opencv-python-headless<5" in str(info.value)
    assert isinstance(info.value, FerEdgeError) and isinstance(info.value, ImportError)


def test_opencv_without_cascades_says_to_install_4x(monkeypatch, fresh_cascade_cache):
    fake = types.ModuleType("cv2")
    fake.__version__ = "5.0.0"
    monkeypatch.setitem(sys.modules, "cv2", fake)
    expected = r"OpenCV 5\.0\.0 does not ship.*opencv-python-headless<5"
    with pytest.raises(DependencyError, match=expected):
        detect_faces(Image.new("L", (100, 100)))


def test_importing_does_not_import_opencv():
    code = (
        "import sys, fer_edge.faces, fer_edge.annotate;"
        "bad = {'cv2', 'torch'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_crop_and_annotate_work_without_opencv(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    img = gradient(100, 100)
    assert crop_face(img, FaceBox(10, 10, 40, 40)).size == (42, 42)
    assert annotate(img, [result((10, 10, 40, 40))]).size == (100, 100)


# ------------------------------------------------------------ real detection


@pytest.fixture(scope="module")
def opencv() -> types.ModuleType:
    return pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def astronaut(opencv) -> Image.Image:
    skdata = pytest.importorskip("skimage.data")
    return Image.fromarray(skdata.astronaut())


def assert_face_at(box: FaceBox, centre: tuple[float, float], side: float) -> None:
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    assert abs(cx - centre[0]) <= 0.15 * side and abs(cy - centre[1]) <= 0.15 * side, box
    assert 0.8 * side <= box.w <= 1.2 * side, box


def test_astronaut_face_is_found_where_it_is(astronaut):
    found = detect_faces(astronaut)
    assert len(found) == 1
    assert_face_at(found[0], ASTRONAUT_FACE_CENTRE, ASTRONAUT_FACE_SIDE)
    assert found[0].score is not None and found[0].score > 0


def head(astronaut: Image.Image, size: int) -> Image.Image:
    """The astronaut's head with some surroundings, scaled to size x size."""
    cx, cy = ASTRONAUT_FACE_CENTRE
    half = ASTRONAUT_FACE_SIDE  # twice the face: enough context for the detector
    square = astronaut.crop((cx - half, cy - half, cx + half, cy + half))
    return square.resize((size, size), Image.BILINEAR)


def test_three_faces_give_three_boxes_largest_first(astronaut):
    canvas = Image.new("RGB", (620, 260), (90, 90, 90))
    placed = [(200, (10, 30)), (150, (240, 60)), (110, (420, 100))]  # (size, top-left)
    for size, corner in placed:
        canvas.paste(head(astronaut, size), corner)
    found = detect_faces(canvas)
    assert len(found) == 3
    assert [f.w * f.h for f in found] == sorted((f.w * f.h for f in found), reverse=True)
    for box, (size, (x, y)) in zip(found, placed):
        assert_face_at(box, (x + size / 2, y + size / 2), ASTRONAUT_FACE_SIDE * size / 194)


def test_large_photo_is_shrunk_for_detection_and_boxes_map_back(astronaut):
    canvas = Image.new("RGB", (3000, 2000), (200, 200, 200))
    canvas.paste(astronaut.resize((1024, 1024), Image.BILINEAR), (1700, 600))
    found = detect_faces(canvas)
    assert len(found) == 1
    cx, cy = ASTRONAUT_FACE_CENTRE
    assert_face_at(found[0], (1700 + 2 * cx, 600 + 2 * cy), 2 * ASTRONAUT_FACE_SIDE)


@pytest.mark.parametrize("size", [(8, 8), (640, 480)])
def test_no_face_gives_empty_list(astronaut, size):
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8))
    assert detect_faces(noise) == []


@pytest.mark.parametrize("name", ["coins", "moon", "camera"])
def test_faceless_sample_photos_give_no_face(astronaut, name):
    """Precision guard: OpenCV's "default" cascade reports faces on coins."""
    skdata = pytest.importorskip("skimage.data")
    assert detect_faces(Image.fromarray(getattr(skdata, name)())) == []


def test_detection_is_safe_from_several_threads(astronaut):
    expected = detect_faces(astronaut)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(detect_faces, [astronaut] * 3))
    assert results == [expected] * 3


def test_detected_crop_is_framed_like_fer2013(opencv):
    """Detect the face in FER-2013 images shown with room around them; cropping
    the detected box must give back (about) the original 48x48 frame."""
    root = Path(os.environ.get("FER_EDGE_DATA", REPO.parent / "shared" / "data" / "fer2013"))
    files = sorted((root / "val" / "happy").glob("*.jpg"))[:40]
    if not files:
        pytest.skip(f"no FER-2013 images under {root} (set FER_EDGE_DATA)")
    frames = []  # (side, centre x, centre y) relative to the shown 96 px face
    for f in files:
        face = to_gray(Image.open(f)).resize((96, 96), Image.BILINEAR)
        shown = Image.new("L", (192, 192), 128)
        shown.paste(face, (48, 48))
        found = detect_faces(shown)
        if found:
            left, top, side = face_frame(found[0])
            frames.append((side / 96, (left + side / 2 - 96) / 96, (top + side / 2 - 96) / 96))
    assert len(frames) >= len(files) // 2
    size, dx, dy = np.median(np.asarray(frames), axis=0)
    assert 0.93 <= size <= 1.08  # individual FER crops vary (quartiles ~0.98..1.13)
    assert abs(dx) <= 0.05 and abs(dy) <= 0.05
