"""Fetch the GroupLens MovieLens archives into a data root, verifying their md5 checksums.

The MovieLens terms forbid redistribution, so the project ships this downloader instead of the data::

    python -m common.download ml-100k --root DIR      # DIR/ml-100k/u.data
    python -m common.download ml-1m --zip ~/ml-1m.zip  # install from an archive you already have

Nothing is downloaded at import time.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from common import progress
from common.datasets import DATA_ENV, default_data_root

BASE_URL = "https://files.grouplens.org/datasets/movielens"
# name -> (archive URL, md5 of the archive, file whose presence means "already installed")
ARCHIVES = {
    "ml-100k": (f"{BASE_URL}/ml-100k.zip", "0e33842e24a9c977be4e0107933c0723", "ml-100k/u.data"),
    "ml-1m": (f"{BASE_URL}/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906", "ml-1m/ratings.dat"),
}


def md5_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    """Raise ValueError naming the file, the expected and the actual md5 when they differ."""
    actual = md5_file(path)
    if actual != expected.lower():
        raise ValueError(f"md5 mismatch for {path}: expected {expected.lower()}, got {actual}")


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a zip, refusing members that would land outside ``dest``."""
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            parts = PurePosixPath(member).parts
            if member.startswith(("/", "\\")) or ".." in parts:
                raise ValueError(f"unsafe path {member!r} in {archive}")
        zf.extractall(dest)


def _fetch(url: str, target: Path, timeout: float = 60.0, chunk_size: int = 1 << 16) -> None:
    """Stream ``url`` into ``target``, with a progress bar of the bytes received."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        size = int(response.headers.get("Content-Length") or 0) or None
        with progress.bar(size, f"download {url.rsplit('/', 1)[-1]}", unit="B",
                          unit_scale=True, unit_divisor=1024) as bar:
            for chunk in iter(lambda: response.read(chunk_size), b""):
                out.write(chunk)
                bar.update(len(chunk))


def install(name: str, root: Path | None = None, *, archive: Path | None = None, force: bool = False) -> Path:
    """Download (or take ``archive``), verify and extract dataset ``name`` under ``root``; return its folder.

    Skips the work when the dataset is already there unless ``force``.
    """
    if name not in ARCHIVES:
        raise ValueError(f"unknown dataset {name!r}; downloadable: {', '.join(ARCHIVES)}")
    url, md5, marker = ARCHIVES[name]
    root = Path(root if root is not None else default_data_root()).expanduser()
    if (root / marker).is_file() and not force:
        return root / name
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        if archive is None:
            archive = Path(tmp) / f"{name}.zip"
            _fetch(url, archive)
        verify_md5(Path(archive), md5)  # before extracting anything
        _safe_extract(Path(archive), root)
    return root / name


def main(argv: list[str] | None = None, prog: str = "python -m common.download") -> int:
    """Command line entry point: 0 installed (or already there), 1 failed (the reason is
    printed), 2 bad arguments."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(ARCHIVES))
    parser.add_argument("--root", type=Path, default=None,
                        help=f"data root (default: ${DATA_ENV} or <repo>/../shared/data)")
    parser.add_argument("--zip", dest="archive", type=Path, default=None,
                        help="use this local archive instead of downloading (still md5-checked)")
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    args = parser.parse_args(argv)
    if args.archive is not None and not args.archive.is_file():
        parser.error(f"--zip {args.archive}: no such file")
    try:
        folder = install(args.name, args.root, archive=args.archive, force=args.force)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
