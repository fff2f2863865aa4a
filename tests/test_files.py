"""Folder walks: what is taken, skipped, reported; loops and odd entries."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fer_edge import files
from fer_edge.files import IMAGE_EXTENSIONS, display_path, find_images, is_image_name, printable


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_common_photo_extensions_are_images():
    for ext in (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"):
        assert ext in IMAGE_EXTENSIONS
    for ext in (".txt", ".pdf", ".mpg", ".eps", ".h5", ".onnx"):
        assert ext not in IMAGE_EXTENSIONS


def test_walk_is_recursive_sorted_and_skips_non_images(tmp_path):
    for name in ("b/2.png", "b/1.JPG", "a.webp", "c/d/e.tif", "notes.txt", "b/model.onnx",
                 ".hidden.png", ".git/x.png"):
        _touch(tmp_path / name)
    scan = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in scan.files] == \
        ["a.webp", "b/1.JPG", "b/2.png", "c/d/e.tif"]
    assert sorted(p.name for p in scan.skipped) == [".git", ".hidden.png", "model.onnx",
                                                    "notes.txt"]
    assert scan.failures == []


def test_explicit_files_are_kept_whatever_their_extension(tmp_path):
    notes = _touch(tmp_path / "notes.txt")
    scan = find_images([notes, tmp_path / "missing.png", notes])
    assert scan.files == [notes]
    assert scan.failures == [(tmp_path / "missing.png", "no such file")]


def test_a_failing_path_given_twice_is_one_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scan = find_images(["gone.jpg", "gone/", "./gone.jpg", "gone", tmp_path / "gone.jpg"])
    # One report per distinct path, in the words of its first mention ("gone/" and "gone" are one).
    assert scan.failures == [(Path("gone.jpg"), "no such file"), (Path("gone"), "no such folder"),
                             (tmp_path / "gone.jpg", "no such file")]


@pytest.mark.parametrize(("typed", "reason"), [
    ("gone/", "no such folder"),
    ("gone.jpg", "no such file"),
    ("gone", "no such file or folder"),
    ("gone/x.png", "no such file"),
])
def test_a_missing_path_is_one_failure_worded_for_what_was_named(tmp_path, monkeypatch, typed,
                                                                 reason):
    monkeypatch.chdir(tmp_path)
    scan = find_images([typed])
    assert scan.files == [] and scan.failures == [(Path(typed), reason)]


def test_annotated_copies_are_skipped_in_walks_but_not_when_named(tmp_path):
    photo = _touch(tmp_path / "team.jpg")
    copies = [_touch(tmp_path / "out" / name)
              for name in ("team.annotated.png", "team.annotated-2.png")]
    own = _touch(tmp_path / "annotated.png")  # a photo that merely has the word in its name
    scan = find_images([tmp_path])
    assert scan.files == [own, photo]
    assert sorted(scan.skipped) == sorted(copies)
    assert find_images([copies[0]]).files == [copies[0]]


def test_directory_named_like_an_image_is_walked_not_opened(tmp_path):
    inner = _touch(tmp_path / "holiday.jpg" / "face.png")
    assert find_images([tmp_path]).files == [inner]
    assert find_images([tmp_path / "holiday.jpg"]).files == [inner]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX symlinks")
def test_symlink_loops_are_walked_once(tmp_path):
    img = _touch(tmp_path / "a" / "x.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    os.symlink(tmp_path, tmp_path / "a" / "up")
    os.symlink("self.png", tmp_path / "a" / "self.png")  # points at itself
    scan = find_images([tmp_path, tmp_path / "a"])
    assert scan.files == [img]
    assert [p.name for p, _ in scan.failures] == ["self.png"]
    assert "cannot read" in scan.failures[0][1]
    assert len(scan.revisits) >= 2


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX symlinks")
def test_dangling_link_with_image_extension_is_a_failure(tmp_path):
    os.symlink(tmp_path / "gone.png", tmp_path / "link.png")
    os.symlink(tmp_path / "gone.txt", tmp_path / "link.txt")
    scan = find_images([tmp_path])
    assert scan.failures == [(tmp_path / "link.png",
                              "broken symbolic link (target does not exist)")]
    assert scan.skipped == [tmp_path / "link.txt"]


def test_unlistable_folder_is_a_failure(tmp_path, monkeypatch):
    _touch(tmp_path / "ok" / "a.png")
    locked = tmp_path / "locked"
    _touch(locked / "b.png")
    # Tests run as root here, where chmod 000 does not stop reading: simulate it.
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(files.os, "scandir", scandir)
    scan = find_images([tmp_path])
    assert scan.files == [tmp_path / "ok" / "a.png"]
    assert scan.failures == [(locked, "cannot list folder (Permission denied)")]


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="needs byte file names")
def test_non_utf8_names_are_found_and_printable(tmp_path):
    raw = os.fsencode(tmp_path) + b"/gr\xfc\xdf.png"
    with open(raw, "wb") as f:
        f.write(b"x")
    [path] = find_images([tmp_path]).files
    assert os.fsencode(path) == raw
    shown = display_path(path)
    assert shown.endswith("gr\\xfc\\xdf.png")
    shown.encode("utf-8")  # would raise on a lone surrogate


def test_printable_leaves_valid_text_alone():
    assert printable("visages/Zoë 😀.jpg") == "visages/Zoë 😀.jpg"
    assert printable("\ud800") == "\\ud800"


def test_is_image_name_is_case_insensitive():
    assert is_image_name("A.PNG") and is_image_name(Path("x.Jpeg"))
    assert not is_image_name("png") and not is_image_name("x.png.txt")
