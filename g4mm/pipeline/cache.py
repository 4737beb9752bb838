"""Content-hash cache of preprocessed + embedded shards (Ray-free).

Layout under ``output_dir``::

    <cache_key>/            committed atomically (built in .tmp-*, then renamed)
        samples/<split>/*.parquet
        features/{text,image}/*.parquet
        report.json
        DONE                written last; a directory without it is rebuilt

The key is sha256 over: the source (a streamed digest of the file listing with sizes +
mtimes, or the synthetic generator's parameters), the :class:`~g4mm.config.DataConfig` fields
that change the content,
:data:`PIPELINE_VERSION`, and the frozen encoders (names plus digests of the files of local
backbones).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from g4mm.config import ExperimentConfig

__all__ = [
    "DONE",
    "PIPELINE_VERSION",
    "cache_key",
    "commit_dir",
    "encoder_fingerprint",
    "is_done",
    "new_tmp_dir",
    "source_fingerprint",
    "stale_tiny_backbones",
    "tiny_recipes",
]

DONE = "DONE"
PIPELINE_VERSION = 6  # 2: node order shuffled in the sample builder; 3: sample ids relative to
# the input root, malformed WikiWeb2M records and blank parquet targets skipped; 4: what the raw
# layout reads (segments, reading order, captions, image owners, lead and cue); 5: classes.json;
# 6: images outside the input refused, over 40 M pixels refused, over 1,024 px shrunk to embed
#: DataConfig fields that never change the produced shards.
_NON_CONTENT_FIELDS = frozenset({"num_blocks", "artifact_dir"})
_SMALL_FILE = 64 * 1024**2  # content-hash files up to this size, else size + mtime


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    st = path.stat()
    if st.st_size <= _SMALL_FILE:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{st.st_size}:{st.st_mtime_ns}"


#: Files an images directory may hold that never change what preprocessing reads: the
#: fetcher's bookkeeping (``jobs/fetch_images.py``), and any hidden file (its lock, partial
#: downloads). Left out of the listing, so a fetch rerun that fetched nothing keeps the key.
_NOT_CONTENT_NAMES = frozenset({"failures.csv", "fetch_report.json"})


def _walk(root: Path, top: Path) -> Iterator[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of every file under ``top``, in the file system's
    order (never sorted: a sort holds a whole directory's entries, 94 MB for one flat
    directory of 100,000 images here); hidden entries and :data:`_NOT_CONTENT_NAMES` left
    out; a file that vanishes meanwhile is skipped."""
    with os.scandir(top) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):  # as os.walk: symlinked dirs not entered
                    yield from _walk(root, Path(entry.path))
                elif entry.is_file(follow_symlinks=True) and entry.name not in _NOT_CONTENT_NAMES:
                    st = entry.stat(follow_symlinks=True)
                    yield (os.path.relpath(entry.path, root), st.st_size, st.st_mtime_ns)
            except FileNotFoundError:  # removed while walking (a partial download renamed)
                continue


def _multiset_add(total: int, item: bytes) -> int:
    """``total + sha256(item)`` modulo 2**256: a digest of a multiset of items, the same in
    any order, kept in O(1) memory while streaming."""
    return (total + int.from_bytes(hashlib.sha256(item).digest(), "big")) % (1 << 256)


def _manifest_digest(path: Path) -> str:
    """An order-independent digest of a ``manifest.csv``'s rows (the sum of their sha256
    modulo 2**256), streamed: the fetcher writes its rows in whatever order its tasks
    finish, and the same rows in another order map the same URLs to the same files."""
    total = 0
    with open(path, "rb") as handle:
        for line in handle:
            line = line.rstrip(b"\r\n")
            if line:
                total = _multiset_add(total, line)
    return f"{total:064x}"


def _listing(root: Path) -> dict[str, Any]:
    """A digest of every file under ``root`` (or of ``root`` itself): ``{"files": n, "bytes":
    total, "digest": of the (relative path, size, mtime_ns) lines, in any order}``
    (:func:`_multiset_add`); a ``manifest.csv`` enters by its rows (:func:`_manifest_digest`),
    not its mtime. Streamed in the file system's order: nothing of the listing is held, so
    the driver's memory is the same for ten files or ten million."""
    from g4mm.data.images import MANIFEST_NAME

    digest = files = total = 0
    if root.is_file():
        st = root.stat()
        lines: Iterable[tuple[str, int, int]] = [(root.name, st.st_size, st.st_mtime_ns)]
    else:
        lines = _walk(root, root)
    for rel, size, mtime_ns in lines:
        if Path(rel).name == MANIFEST_NAME:
            line = f"{rel}\0{_manifest_digest(root / rel)}"
        else:
            line = f"{rel}\0{size}\0{mtime_ns}"
        digest = _multiset_add(digest, line.encode())
        files += 1
        total += size
    return {"files": files, "bytes": total, "digest": f"{digest:064x}"}


def source_fingerprint(cfg: ExperimentConfig) -> dict[str, Any]:
    """What identifies the raw input: synthetic parameters or a listing of the input files."""
    d = cfg.data
    common = {"image_size": d.image_size, "seed": d.seed}
    if d.dataset.startswith("synthetic"):
        from g4mm.data.versions import GENERATOR_VERSION

        common["generator"] = GENERATOR_VERSION
    if d.dataset == "synthetic-docs":
        return {"synthetic": d.dataset, "num_pages": d.num_pages, **common}
    if d.dataset == "synthetic-products":
        return {"synthetic": d.dataset, "num_products": d.num_products, **common}
    if d.input is None:
        raise ValueError(f"data.input is required for dataset {d.dataset!r}")
    src: dict[str, Any] = {"input": str(Path(d.input).resolve()), "files": _listing(Path(d.input))}
    if d.images is not None and Path(d.images).resolve() != Path(d.input).resolve():
        src["images"] = str(Path(d.images).resolve())
        src["image_files"] = _listing(Path(d.images))
    outside = _images_outside(d)
    if outside:
        src["outside_files"] = outside
    return src


def _images_outside(d: Any) -> list[tuple[str, int, int] | tuple[str, str]]:
    """``(path, size, mtime_ns)`` (or ``(path, "missing")``) of every image the source refers
    to by a path outside its input and images directories, which their listings miss: a
    parquet ``image_path`` or a WikiWeb2M ``manifest.csv`` row may be absolute."""
    input_dir = Path(d.input).resolve()
    roots = [input_dir if input_dir.is_dir() else input_dir.parent]
    if d.images is not None:
        roots.append(Path(d.images).resolve())
    refs: Iterable[Path] = []
    if d.dataset == "parquet" and (input_dir / "nodes.parquet").is_file():
        import pyarrow.parquet as pq

        nodes = input_dir / "nodes.parquet"
        if "image_path" in pq.read_schema(nodes).names:
            column = pq.read_table(nodes, columns=["image_path"]).column("image_path")
            # any type here: the reader names a column of the wrong type afterwards
            refs = [input_dir / str(p) for p in column.to_pylist() if p and str(p).strip()]
    elif d.dataset == "wikiweb2m":
        from g4mm.data.images import iter_manifest  # PIL, no torch

        images_dir = d.images or (d.input if input_dir.is_dir() else None)
        refs = (path for _line, _url, path in iter_manifest(images_dir))  # streamed: rows may be
        # millions, and only the (usually no) rows outside the roots are kept
    outside = {
        ref
        for ref in (Path(os.path.normpath(r)) for r in refs)
        if not any(ref.is_relative_to(root) for root in roots)
    }
    out: list[tuple[str, int, int] | tuple[str, str]] = []
    for ref in sorted(outside):
        if ref.is_file():
            st = ref.stat()
            out.append((str(ref), st.st_size, st.st_mtime_ns))
        else:
            out.append((str(ref), "missing"))
    return out


def _backbone_fingerprint(name: str, kind: str, artifact_dir: str) -> dict[str, Any] | None:
    """Name + digests of a local backbone's files; None when a local backbone isn't built."""
    from g4mm.model.backbones import BackboneNotFoundError, resolve_backbone  # torch: lazily

    try:
        source = resolve_backbone(name, kind, artifact_dir)  # type: ignore[arg-type]
    except BackboneNotFoundError:
        return None
    path = Path(source)
    if not path.is_dir():  # hub id: the name is all we know without the network
        return {"name": name, "hub": source}
    files = {p.name: _file_digest(p) for p in sorted(path.iterdir()) if p.is_file()}
    return {"name": name, "files": files}


def encoder_fingerprint(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The frozen encoders' identity, or None when a local (tiny) backbone isn't built yet."""
    m = cfg.model
    text_name = m.lm if m.text_encoder == "lm" else m.text_encoder
    text = _backbone_fingerprint(text_name, "lm", cfg.data.artifact_dir)
    vision = _backbone_fingerprint(m.vision, "vision", cfg.data.artifact_dir)
    if text is None or vision is None:
        return None
    return {"text": text, "vision": vision}


def _content_fields(cfg: ExperimentConfig) -> dict[str, Any]:
    """The data config fields that decide the shards (synthetic sources: not the paths)."""
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in _NON_CONTENT_FIELDS}
    if cfg.data.dataset.startswith("synthetic"):
        data.pop("input", None)
        data.pop("images", None)
    return data


def tiny_recipes(
    cfg: ExperimentConfig, source: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """What the ``tiny`` backbones are built from, recorded in their stamps
    (:func:`g4mm.data.corpus.ensure_tiny_backbones`): the LM from the dataset's corpus (a
    synthetic source: its generator parameters; other data: the input files and the data
    fields that decide the samples' texts), the vision encoder from the seed and image size.
    ``source``: :func:`source_fingerprint` when the caller has it already (it lists the input)."""
    d = cfg.data
    lm: dict[str, Any] = {"dataset": d.dataset, "source": source or source_fingerprint(cfg)}
    if not d.dataset.startswith("synthetic"):
        lm["data"] = _content_fields(cfg)
    return {"lm": lm, "vision": {"seed": d.seed, "image_size": d.image_size}}


def stale_tiny_backbones(cfg: ExperimentConfig, source: dict[str, Any] | None = None) -> list[str]:
    """The ``tiny`` backbones of ``cfg.model`` that exist but were built by another build
    version or from another recipe (:func:`tiny_recipes`;
    :func:`g4mm.model.backbones.stamp_is_current`): they must be rebuilt before use. Missing
    ones are not listed (:func:`encoder_fingerprint` is None for them)."""
    from g4mm.model.backbones import BACKBONES, read_stamp, stamp_is_current

    m, recipes = cfg.model, tiny_recipes(cfg, source)
    text_encoder = m.lm if m.text_encoder == "lm" else m.text_encoder
    wanted = sorted({("lm", m.lm), ("lm", text_encoder), ("vision", m.vision)})
    stale = []
    for kind, name in wanted:
        if name != "tiny":
            continue
        stamp = read_stamp(Path(cfg.data.artifact_dir) / BACKBONES[(kind, name)].local_subdir)
        if stamp is not None and not stamp_is_current(stamp, recipes[kind]):
            stale.append(kind)
    return stale


def cache_key(cfg: ExperimentConfig, source: dict[str, Any] | None = None) -> str | None:
    """sha256 hex (first 16 chars) of everything that decides the output, or None when the
    encoders cannot be fingerprinted yet (a tiny backbone still to be built, or to be rebuilt:
    :func:`stale_tiny_backbones`).

    The code is represented by :data:`PIPELINE_VERSION` only (bump it when a change to the
    readers / sample builder / encoders changes the shards): hashing the source files made
    every unrelated edit or reformat invalidate every cache. ``source``:
    :func:`source_fingerprint` when the caller has it (it walks the input and images: a run
    computes it once).
    """
    encoders = encoder_fingerprint(cfg)
    if encoders is None:
        return None
    source = source or source_fingerprint(cfg)
    if stale_tiny_backbones(cfg, source):
        return None
    payload = {
        "version": PIPELINE_VERSION,
        "source": source,
        "data": _content_fields(cfg),
        "encoders": encoders,
    }
    return _sha256(payload)[:16]


def is_done(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a committed cache directory (has its ``DONE`` marker)."""
    return (Path(path) / DONE).is_file()


def new_tmp_dir(output_dir: str | os.PathLike[str]) -> Path:
    """A fresh private build directory inside ``output_dir`` (same filesystem -> atomic rename)."""
    tmp = Path(output_dir) / f".tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> bool:
    """Write ``DONE`` into ``tmp`` and rename it to ``final``.

    A stale ``final`` without ``DONE`` (crashed earlier run) is removed first. Returns False when
    another process committed ``final`` meanwhile (``tmp`` is then discarded).
    """
    (tmp / DONE).write_text("ok\n")
    if final.exists():
        if is_done(final):
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        shutil.rmtree(final)
    try:
        os.replace(tmp, final)
    except OSError:
        if is_done(final):
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise
    return True
