"""Image references: resolve a URL or path to a local file, check it decodes, load it.

Sources store image *references* (WikiWeb2M: URLs; MM-GRAPH: ``images/{asin}.jpg``; parquet:
paths). A reference resolves to a file under an images directory, either through
``images_dir/manifest.csv`` (header ``url,path``, path relative to ``images_dir``) or, for a URL
absent from the manifest, through the URL's file name inside ``images_dir``.

:func:`check_image` fully decodes the file (``PIL.Image.open`` + ``load``), so a truncated JPEG
is ``"corrupt"``. This module never sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``; if some other
code sets it globally, truncated files may pass as ``"ok"``.
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image

__all__ = [
    "MANIFEST_NAME",
    "check_image",
    "check_images",
    "is_url",
    "load_image",
    "load_manifest",
    "resolve_image",
]

#: File name of the URL -> path manifest inside an images directory.
MANIFEST_NAME = "manifest.csv"


def is_url(ref: str) -> bool:
    """True when ``ref`` has a URL scheme with a network location (``https://host/...``)."""
    parts = urlsplit(ref)
    return bool(parts.scheme) and bool(parts.netloc)


def load_manifest(images_dir: str | os.PathLike[str] | None) -> dict[str, Path]:
    """The URL -> absolute path map of ``images_dir/manifest.csv``; ``{}`` when there is none.

    The csv must start with the header ``url,path``; each row has exactly two non-empty
    fields, ``path`` relative to ``images_dir`` (or absolute). A URL listed twice must map to
    the same path. Parsed once per process and file version (path, mtime, size): every
    preprocessing task of a Ray worker asks for the same manifest.

    Raises:
        ValueError: for a wrong header or a bad row, naming the file and the 1-based line.
    """
    if images_dir is None:
        return {}
    file = Path(images_dir) / MANIFEST_NAME
    if not file.is_file():
        return {}
    stat = file.stat()
    return dict(_parse_manifest(str(file), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _parse_manifest(file: str, mtime_ns: int, size: int) -> dict[str, Path]:
    """:func:`load_manifest`'s parser; ``mtime_ns`` and ``size`` only key the cache."""
    root = Path(file).parent.resolve()  # resolved once; rows are joined and normalised
    manifest: dict[str, Path] = {}
    with open(file, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["url", "path"]:
            raise ValueError(f"{file}:1: header must be 'url,path', got {header!r}")
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{file}:{line}: expected 2 non-empty fields url,path, got {row}")
            url, rel = row[0].strip(), row[1].strip()
            path = Path(os.path.normpath(os.path.join(root, rel)))
            if manifest.get(url, path) != path:
                raise ValueError(
                    f"{file}:{line}: url {url!r} listed again with a different path {rel!r}"
                )
            manifest[url] = path
    return manifest


def resolve_image(
    url_or_path: str,
    images_dir: str | os.PathLike[str] | None,
    manifest: Mapping[str, Path] | None = None,
) -> Path:
    """The local file of an image reference (the file may not exist; see :func:`check_image`).

    Order: the manifest entry; for a URL, its (percent-decoded) file name inside
    ``images_dir`` (the raw, still-encoded name when only that one exists); for a path, itself
    when absolute, else relative to ``images_dir`` (or the working directory without one).

    Raises:
        ValueError: for a URL not in the manifest when ``images_dir`` is ``None``.
    """
    ref = url_or_path.strip()
    if manifest and ref in manifest:
        return Path(manifest[ref])
    if is_url(ref):
        if images_dir is None:
            raise ValueError(f"image URL {ref!r} needs an images directory to resolve")
        raw_name = urlsplit(ref).path.rsplit("/", 1)[-1]
        decoded = (Path(images_dir) / unquote(raw_name)).resolve()
        encoded = (Path(images_dir) / raw_name).resolve()
        return encoded if not decoded.is_file() and encoded.is_file() else decoded
    path = Path(ref)
    if not path.is_absolute() and images_dir is not None:
        path = Path(images_dir) / path
    return path.resolve()


def check_image(path: str | os.PathLike[str]) -> str:
    """``"ok"`` when the file decodes fully, ``"missing"`` when there is no such file,
    ``"corrupt"`` when PIL cannot open or fully load it (e.g. truncated)."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as image:
            image.load()
    except Exception:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        return "corrupt"
    return "ok"


def check_images(paths: Iterable[str | os.PathLike[str]], workers: int = 8) -> list[str]:
    """:func:`check_image` over many files with a thread pool (PIL decoding releases the GIL);
    results in input order."""
    paths = [Path(p) for p in paths]
    statuses = ["missing"] * len(paths)
    present = [i for i, p in enumerate(paths) if p.is_file()]  # cheap; decode only these
    if workers <= 1 or len(present) < 2:
        results = [check_image(paths[i]) for i in present]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(check_image, (paths[i] for i in present)))
    for i, status in zip(present, results, strict=True):
        statuses[i] = status
    return statuses


def load_image(
    path: str | os.PathLike[str], size: int | tuple[int, int] | None = None
) -> Image.Image:
    """The image at ``path`` as RGB, resized (bicubic) to ``size`` (``int`` -> square) if given.

    Raises:
        FileNotFoundError: no such file.
        OSError: the file does not decode (PIL's error, e.g. truncated).
    """
    with Image.open(path) as image:
        image.load()
        rgb = image.convert("RGB")
    if size is not None:
        target = (size, size) if isinstance(size, int) else tuple(size)
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    return rgb
