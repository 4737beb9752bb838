"""Image references: resolve a URL or path to a local file, check it decodes, load it.

Sources store image *references* (WikiWeb2M: URLs; MM-GRAPH: ``images/{asin}.jpg``; parquet:
paths). A reference resolves to a file under an images directory, either through
``images_dir/manifest.csv`` (header ``url,path``, path relative to ``images_dir``) or, for a URL
absent from the manifest, through the URL's file name inside ``images_dir``.

:func:`check_image` fully decodes the file (``PIL.Image.open`` + ``load``), so a truncated JPEG
is ``"corrupt"``. This module never sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``; if some other
code sets it globally, truncated files may pass as ``"ok"``.

Decompression bombs: an image whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels is
``"corrupt"`` without being decoded (a 12 KB PNG can declare 10,000 x 10,000 pixels, 300 MB
decoded; PIL itself only warns below 179 M pixels), and :func:`load_image` refuses it too.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image

__all__ = [
    "MANIFEST_NAME",
    "MAX_IMAGE_PIXELS",
    "check_image",
    "check_images",
    "is_inside",
    "is_url",
    "iter_manifest",
    "load_image",
    "load_manifest",
    "resolve_image",
]

log = logging.getLogger(__name__)

#: File name of the URL -> path manifest inside an images directory.
MANIFEST_NAME = "manifest.csv"
#: Largest image (width x height) decoded: 40 M pixels, e.g. 8,000 x 5,000 (120 MB as RGB).
MAX_IMAGE_PIXELS = 40_000_000


# PIL warns on opening an image over 89 M pixels; :func:`_refuse_huge` refuses those before
# decoding, so the warning says nothing (set once here: catch_warnings is not thread-safe and
# images are checked from a thread pool)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _open(path: str | os.PathLike[str]) -> Image.Image:
    """``Image.open`` (reads the header only); the size is checked by :func:`_refuse_huge`."""
    return Image.open(path)


def _refuse_huge(image: Image.Image, path: str | os.PathLike[str]) -> None:
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise OSError(f"{path}: {width} x {height} pixels, over the limit of "
                      f"{MAX_IMAGE_PIXELS:,} (a decompression bomb?): not decoded")  # fmt: skip


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


def iter_manifest(
    images_dir: str | os.PathLike[str] | None,
) -> Iterator[tuple[int, str, Path]]:
    """``(1-based line, url, absolute path)`` of each row of ``images_dir/manifest.csv``,
    streamed (nothing when there is none); validated as :func:`load_manifest` describes (a URL
    listed again with another path is :func:`load_manifest`'s check: this keeps no state)."""
    if images_dir is None:
        return
    file = Path(images_dir) / MANIFEST_NAME
    if not file.is_file():
        return
    root = file.parent.resolve()  # resolved once; rows are joined and normalised
    with open(file, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["url", "path"]:
            raise ValueError(f"{file}:1: header must be 'url,path', got {header!r}")
        for row in reader:
            if not row:
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(
                    f"{file}:{reader.line_num}: expected 2 non-empty fields url,path, got {row}"
                )
            url, rel = row[0].strip(), row[1].strip()
            yield reader.line_num, url, Path(os.path.normpath(os.path.join(root, rel)))


@functools.lru_cache(maxsize=8)
def _parse_manifest(file: str, mtime_ns: int, size: int) -> dict[str, Path]:
    """:func:`load_manifest`'s parser; ``mtime_ns`` and ``size`` only key the cache."""
    manifest: dict[str, Path] = {}
    for line, url, path in iter_manifest(Path(file).parent):
        if manifest.get(url, path) != path:
            raise ValueError(f"{file}:{line}: url {url!r} listed again with a different path "
                             f"{str(path)!r}")  # fmt: skip
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


def is_inside(path: str | os.PathLike[str], roots: Sequence[str | os.PathLike[str]]) -> bool:
    """Whether ``path``, symlinks and ``..`` resolved, lies under one of ``roots`` (resolved)."""
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(os.path.realpath(root)) for root in roots)


def check_image(
    path: str | os.PathLike[str], inside: Sequence[str | os.PathLike[str]] | None = None
) -> str:
    """``"ok"`` when the file decodes fully, ``"missing"`` when there is no such file,
    ``"corrupt"`` when PIL cannot open or fully load it (e.g. truncated), or its header declares
    more than :data:`MAX_IMAGE_PIXELS` pixels (then it is not decoded).

    ``inside``: the directories images may come from; a path that resolves elsewhere (an
    absolute path, ``../..``, a symlink out) is ``"corrupt"`` without being opened, and logged
    (its path only: none of its bytes are read)."""
    path = Path(path)
    if inside is not None and not is_inside(path, inside):
        log.warning("image %s resolves outside %s: not opened, counted corrupt (set "
                    "data.allow_outside_images: true to read images from elsewhere)",
                    path, ", ".join(map(str, inside)))  # fmt: skip
        return "corrupt"
    if not path.is_file():
        return "missing"
    try:
        with _open(path) as image:
            _refuse_huge(image, path)
            image.load()
    except Exception:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        return "corrupt"
    return "ok"


def check_images(
    paths: Iterable[str | os.PathLike[str]],
    workers: int = 8,
    inside: Sequence[str | os.PathLike[str]] | None = None,
) -> list[str]:
    """:func:`check_image` over many files with a thread pool (PIL decoding releases the GIL);
    results in input order."""
    paths = [Path(p) for p in paths]
    statuses = ["missing"] * len(paths)
    present = [i for i, p in enumerate(paths)  # cheap; decode only these
               if p.is_file() or (inside is not None and not is_inside(p, inside))]  # fmt: skip
    check = functools.partial(check_image, inside=inside)
    if workers <= 1 or len(present) < 2:
        results = [check(paths[i]) for i in present]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(check, (paths[i] for i in present)))
    for i, status in zip(present, results, strict=True):
        statuses[i] = status
    return statuses


def load_image(
    path: str | os.PathLike[str],
    size: int | tuple[int, int] | None = None,
    max_side: int | None = None,
) -> Image.Image:
    """The image at ``path`` as RGB, resized (bicubic) to ``size`` (``int`` -> square) if given,
    else shrunk (aspect kept) so neither side exceeds ``max_side`` if given; a JPEG is then
    decoded at a reduced scale already (``Image.draft``), so a large photo never sits in memory
    at full size (an encoder's processor resizes to ~224 px anyway).

    Raises:
        FileNotFoundError: no such file.
        OSError: the file does not decode (PIL's error, e.g. truncated), or declares more than
            :data:`MAX_IMAGE_PIXELS` pixels.
    """
    with _open(path) as image:
        _refuse_huge(image, path)
        if max_side is not None and size is None:
            image.draft("RGB", (max_side, max_side))
        image.load()
        rgb = image.convert("RGB")
    if max_side is not None and size is None and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    if size is not None:
        target = (size, size) if isinstance(size, int) else tuple(size)
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    return rgb
