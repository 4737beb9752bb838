"""The embedded benchmark: deterministic synthetic multimodal graphs, written in the real formats.

Two generators write raw files that the ordinary readers then consume, so the synthetic default
exercises exactly the code paths of the real datasets:

- :func:`write_synthetic_docs` - WikiWeb2M-shaped pages (gzipped TFRecord shards of
  ``SequenceExample`` with the official field names) with hierarchical sections and Pillow-rendered
  images, for section summarisation;
- :func:`write_synthetic_products` - an MM-GRAPH-shaped co-purchase graph (``.pt`` files, raw-text
  jsonl, ``images/{asin}.jpg``) for node classification with two zero-shot classes.

Both are deterministic functions of their arguments (byte-identical files for the same seed).
Each writes ``synthetic.json`` (generator parameters and counts) and ``metadata.jsonl`` (the
rendered attributes of every image, for tests and analysis only; no reader uses it).

Images show ``count`` (1-3) filled shapes of one colour on a light, textured background
(plain / striped / dotted); texture and count are nuisance attributes unless a task names them.

**Docs task and why it needs structure and vision.** A summarisation target is a depth-1 section
``T`` with a parent section ``P`` and >= 1 child section. Its target sentence
(``section_clean_1st_sentence``) is::

    "the <topic> section under <parent topic> shows <count> <colour> <shape>s."

``<topic>`` is in ``T``'s own text (title and ``section_rest_sentence``, hence in the prompt);
``<parent topic>`` is only in the text of ``P``; count, colour and shape are those of ``T``'s own
(single) image. In the tau=2 neighbourhood of ``T`` (graph of the WikiWeb2M reader, DATA-SPEC):

- hop 1: ``T``'s image (the answer), ``P``, ``T``'s children;
- hop 2: 1-2 images of ``P`` and 1-2 images of ``T``'s children (distractors), the page or
  grand-parent text, siblings' text. Siblings' and grand-parents' images are at hop 3.

The LM reads the neighbourhood's text itself (the raw layout, :mod:`g4mm.model.layout`), so
which slot needs which modality, and where the benchmark's claims hold:

- **topic: text alone.** It is in ``T``'s own text, which the layout reads first; every
  variant, text_only included, can copy it.
- **parent: text + text structure.** ``P``'s text is in the LM's input too, but nothing in
  the text says which section is ``T``'s parent: the record lists the sections in a random
  order (parent indices follow), titles and sentences name no relation, and depth is not read.
  Only the text graph does: ``P`` is the one hop-1 text node with further text neighbours
  (``T``'s children are leaves).
- **count, colour, shape: images + image structure.** A text-only model cannot produce them:
  these words never occur in any text field except target sentences, and no other target lies
  within two hops of a target (at most one target per parent; targets' children are never
  targets); captions are "Figure <n>." and file names/URLs carry no attributes. Its best guess
  is the prior, 1/6 for the colour, 1/4 for the shape and 1/3 for the count. A structure-blind
  model that sees the neighbourhood's images as a bag cannot tell which is ``T``'s own: the
  k = 3..5 images have pairwise distinct colours, shapes and counts are drawn i.i.d., and
  which of them is the answer is uniformly random, so any function of the bag picks the right
  colour with probability at most 1/k. The answer image is identified only by its graph
  position: it is the only image at hop 1, and in the image subgraph the only node adjacent to
  every other image (IMAGE_IMAGE edges join it to its parent's and children's images, which
  are not joined to each other).

That last claim holds where the graph tokens stand after the text (``model.token_placement:
after_text``, the default config's), with the images in the sample builder's seeded order.
Under ``at_images`` the layout itself says which image is ``T``'s: its tokens follow ``T``'s own
text and caption, first in the input, as on real pages, so there the visual slots test reading
the image, not the structure. Node order carries no hop either: the sample builder puts each
sample's neighbours in a seeded random order (the target's own text first), so a
structure-blind baseline that reads node positions learns nothing from them.

**Products task.** Each product's image shows a colour family (crimson, azure, golden, emerald,
with shade jitter) and a shape from a group (round: circle/ring; angular: square/diamond;
pointed: triangle). Its class is "<own colour family> <plurality shape group of its
co-purchased neighbours' images>" (ties: its own group when tied, else the first): 12 classes.
Three are held out of training (zero-shot), one per colour and group ("a Latin square"), so
every held-out colour is trained with the two other groups and every group with three colours:
each held-out name is a new composition of words the training targets use, and nothing in
training ties a colour to one group (with two groups, holding out "azure angular" leaves
"azure" trained only as "azure round", and a model learns to write "round" after "azure"
whatever the neighbours show: the generalised zero-shot accuracy was 0.0, measured). Titles and
descriptions are drawn independently of colour and shape (they depend only on the product's
community), so neither a product's own text, nor its own image alone, nor its neighbours' text
determine the class.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from g4mm.data.schema import SEQUENCE_FIELDS
from g4mm.data.tfrecord import iter_tfrecords, parse_sequence_example, sequence_example
from g4mm.data.tfrecord import write_tfrecords as _write_tfrecords
from g4mm.data.versions import GENERATOR_VERSION

if TYPE_CHECKING:
    import torch

__all__ = [
    "ATTRIBUTE_WORDS",
    "COLOURS",
    "COUNT_WORDS",
    "PRODUCT_CLASS_NAMES",
    "SHAPES",
    "SHAPE_GROUPS",
    "TARGET_SLOTS",
    "corpus_texts",
    "lm_copy_documents",
    "parse_target_sentence",
    "random_render_attributes",
    "render_image",
    "slot_accuracy",
    "write_synthetic_docs",
    "write_synthetic_products",
]

#: ``map_chunks(fn, jobs)``: ``fn(job)`` for each job, in order, possibly in parallel (None: the
#: builtin ``map``).
MapChunks = Callable[[Callable[[Any], Any], Sequence[Any]], Iterable[Any]] | None

#: Well-separated object colours (docs).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 10),
    "yellow": (230, 210, 20),
    "green": (30, 165, 55),
    "blue": (35, 80, 225),
    "purple": (145, 45, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three")
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted")

#: Product colour families and shape groups; class = (family, group of neighbours).
PRODUCT_COLOURS: dict[str, tuple[int, int, int]] = {
    "crimson": (200, 25, 50),
    "azure": (30, 120, 230),
    "golden": (235, 180, 20),
    "emerald": (20, 160, 90),
}
SHAPE_GROUPS: dict[str, tuple[str, ...]] = {
    "round": ("circle", "ring"),
    "angular": ("square", "diamond"),
    "pointed": ("triangle",),
}
PRODUCT_CLASS_NAMES: list[str] = [f"{c} {g}" for c in PRODUCT_COLOURS for g in SHAPE_GROUPS]

#: Words that may appear only in target sentences / class names, never in other text fields.
ATTRIBUTE_WORDS: frozenset[str] = frozenset(
    [
        *COLOURS,
        *SHAPES,
        *(s + "s" for s in SHAPES),
        *COUNT_WORDS,
        *TEXTURES,
        *PRODUCT_COLOURS,
        *SHAPE_GROUPS,
        "ring",
        "rings",
    ]
)

_TOPICS = [
    "river",
    "harbor",
    "castle",
    "forest",
    "valley",
    "bridge",
    "market",
    "temple",
    "garden",
    "island",
    "canyon",
    "village",
    "tower",
    "library",
    "museum",
    "station",
    "meadow",
    "glacier",
    "desert",
    "lagoon",
    "orchard",
    "quarry",
    "vineyard",
    "abbey",
    "lighthouse",
    "fortress",
    "canal",
    "plateau",
    "marsh",
    "summit",
    "cavern",
    "harvest",
    "festival",
    "railway",
    "monastery",
    "theater",
    "college",
    "factory",
    "mill",
    "dam",
    "port",
    "colony",
    "frontier",
    "kingdom",
    "empire",
]
_PAGE_TOPICS = [
    "atlas",
    "chronicle",
    "survey",
    "history",
    "guide",
    "journal",
    "record",
    "archive",
    "study",
    "review",
    "almanac",
    "digest",
]
_NOUNS = [
    "farmers",
    "traders",
    "monks",
    "soldiers",
    "pilgrims",
    "builders",
    "sailors",
    "scholars",
    "merchants",
    "miners",
    "travellers",
    "settlers",
    "artists",
    "engineers",
    "rulers",
]
_VERBS = ["describes", "recalls", "covers", "explains", "notes", "traces", "outlines", "lists"]
_PLACES = [
    "north",
    "south",
    "east",
    "west",
    "coast",
    "hills",
    "delta",
    "interior",
    "lowlands",
    "uplands",
]
_PRODUCT_NOUNS = (
    ("kettle", "pan", "ladle", "grater", "blender"),
    ("lantern", "tent", "flask", "compass", "hammock"),
    ("headset", "charger", "cable", "speaker", "adapter"),
    ("notebook", "stapler", "folder", "binder", "marker"),
    ("scarf", "glove", "belt", "wallet", "backpack"),
    ("trowel", "hose", "planter", "rake", "sprinkler"),
)
_BRANDS = ["acme", "norda", "velto", "quill", "tarn", "brisk", "halden", "oskar", "lumo", "fenwick"]
_ADJECTIVES = [
    "compact",
    "sturdy",
    "classic",
    "deluxe",
    "portable",
    "light",
    "premium",
    "basic",
    "modern",
    "rugged",
]
_USES = ["home", "travel", "office", "kitchen", "workshop", "camping", "school", "garden"]

_BACKGROUND = (236, 236, 236)
_TEXTURE_INK = (196, 196, 196)
_SUPERSAMPLE = 4


# --------------------------------------------------------------------------- image rendering


@dataclass(frozen=True)
class ImageAttributes:
    """What an image shows. ``rgb`` is the exact fill colour (shade jitter included)."""

    colour: str
    shape: str
    count: int
    texture: str
    rgb: tuple[int, int, int]


def _jitter_rgb(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    """``rgb`` with a small per-channel shade jitter (+-12)."""
    return tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in rgb)  # type: ignore[return-value]


def _draw_texture(draw: ImageDraw.ImageDraw, side: int, texture: str, phase: int) -> None:
    """Stripes or dots in light grey over the background (nothing for ``plain``)."""
    step = side // 8
    if texture == "striped":
        for x in range(-side, side, step):
            x0 = x + phase % step
            draw.line([(x0, 0), (x0 + side, side)], fill=_TEXTURE_INK, width=max(1, step // 3))
    elif texture == "dotted":
        r = max(1, step // 5)
        for y in range(step // 2, side, step):
            for x in range(step // 2, side, step):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=_TEXTURE_INK)


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of a square, triangle or diamond of radius ``r`` around (cx, cy)."""
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    raise ValueError(f"unknown polygon shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rgb):
    """One filled shape (``ring`` = thick circle outline)."""
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "ring":
        draw.ellipse(box, outline=rgb, width=max(2, int(r * 0.4)))
    else:
        draw.polygon(_shape_points(shape, cx, cy, r), fill=rgb)


_LAYOUTS: dict[int, tuple[float, list[tuple[float, float]]]] = {
    1: (0.32, [(0.5, 0.5)]),
    2: (0.21, [(0.27, 0.5), (0.73, 0.5)]),
    3: (0.17, [(0.5, 0.27), (0.26, 0.72), (0.74, 0.72)]),
}


def render_image(attrs: ImageAttributes, size: int, rng: np.random.Generator) -> Image.Image:
    """Render ``attrs`` as an RGB image of ``size`` x ``size`` pixels (deterministic in rng).

    Drawn at 4x and downsampled (anti-aliased); objects get a small position jitter.
    """
    side = size * _SUPERSAMPLE
    img = Image.new("RGB", (side, side), _BACKGROUND)
    draw = ImageDraw.Draw(img)
    _draw_texture(draw, side, attrs.texture, int(rng.integers(0, 64)))
    radius, centres = _LAYOUTS[attrs.count]
    for fx, fy in centres:
        jx, jy = rng.uniform(-0.04, 0.04, size=2)
        _draw_shape(draw, attrs.shape, (fx + jx) * side, (fy + jy) * side, radius * side, attrs.rgb)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def _save_image(img: Image.Image, path: Path) -> None:
    """PNG or JPEG (quality 95) by suffix; both byte-deterministic in Pillow."""
    if path.suffix == ".png":
        img.save(path, format="PNG")
    else:
        img.save(path, format="JPEG", quality=95)


def _random_attrs(rng: np.random.Generator, colour: str | None = None) -> ImageAttributes:
    """A docs image with i.i.d. attributes (``colour`` fixed when given)."""
    colour = colour or str(rng.choice(list(COLOURS)))
    return ImageAttributes(
        colour=colour,
        shape=str(rng.choice(SHAPES)),
        count=int(rng.integers(1, 4)),
        texture=str(rng.choice(TEXTURES)),
        rgb=_jitter_rgb(COLOURS[colour], rng),
    )


def random_render_attributes(rng: np.random.Generator) -> ImageAttributes:
    """Any attribute combination either benchmark can draw (docs and product colours, every
    shape incl. rings): the distribution the tiny vision encoder is pretrained on."""
    palette = {**COLOURS, **PRODUCT_COLOURS}
    colour = str(rng.choice(list(palette)))
    return ImageAttributes(
        colour=colour,
        shape=str(rng.choice([*SHAPES, "ring"])),
        count=int(rng.integers(1, 4)),
        texture=str(rng.choice(TEXTURES)),
        rgb=_jitter_rgb(palette[colour], rng),
    )


# ----------------------------------------------------------------------------------- docs


@dataclass
class _Section:
    """One section of a synthetic page (pre-order position = index in the page's lists)."""

    parent: int
    depth: int
    topic: str
    children: list[int] = field(default_factory=list)
    is_target: bool = False
    images: list[ImageAttributes] = field(default_factory=list)


def _build_tree(rng: np.random.Generator) -> list[_Section]:
    """Pre-order sections: 2-3 top-level, 1-3 children each, 0-2 grandchildren each."""
    n_top = int(rng.integers(2, 4))
    mids = [int(rng.integers(1, 4)) for _ in range(n_top)]
    leaves = [[int(rng.choice(3, p=[0.3, 0.4, 0.3])) for _ in range(m)] for m in mids]
    total = n_top + sum(mids) + sum(map(sum, leaves))
    topics = [str(t) for t in rng.choice(_TOPICS, size=total, replace=False)]
    sections: list[_Section] = []

    def add(parent: int, depth: int) -> int:
        sections.append(_Section(parent=parent, depth=depth, topic=topics[len(sections)]))
        if parent >= 0:
            sections[parent].children.append(len(sections) - 1)
        return len(sections) - 1

    for t in range(n_top):
        top = add(-1, 0)
        for m in range(mids[t]):
            mid = add(top, 1)
            for _ in range(leaves[t][m]):
                add(mid, 2)
    return sections


def _choose_targets(sections: list[_Section], rng: np.random.Generator) -> list[int]:
    """At most one target per top-level section: a depth-1 child that has children."""
    targets = []
    for sec in sections:
        candidates = [c for c in sec.children if sec.depth == 0 and sections[c].children]
        if candidates and rng.random() < 0.9:
            t = int(rng.choice(candidates))
            sections[t].is_target = True
            targets.append(t)
    return targets


def _split_count(total: int, parts: int, rng: np.random.Generator) -> list[int]:
    """``total`` images spread over ``parts`` sections at random (each part >= 0)."""
    counts = [0] * parts
    for i in rng.integers(0, parts, size=total):
        counts[int(i)] += 1
    return counts


def _assign_images(sections: list[_Section], targets: list[int], rng: np.random.Generator):
    """Images of targets' neighbourhoods (distinct colours), then i.i.d. images elsewhere."""
    done: set[int] = set()
    for t in targets:
        parent, children = sections[t].parent, sections[t].children
        n_parent, n_children = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        colours = [
            str(c) for c in rng.choice(list(COLOURS), size=1 + n_parent + n_children, replace=False)
        ]
        sections[t].images = [_random_attrs(rng, colours[0])]
        sections[parent].images = [_random_attrs(rng, c) for c in colours[1 : 1 + n_parent]]
        rest = iter(colours[1 + n_parent :])
        for child, n in zip(children, _split_count(n_children, len(children), rng), strict=True):
            sections[child].images = [_random_attrs(rng, next(rest)) for _ in range(n)]
        done.update([t, parent, *children])
    for i, sec in enumerate(sections):
        if i not in done:
            n = int(rng.choice(3, p=[0.4, 0.4, 0.2]))
            sec.images = [_random_attrs(rng) for _ in range(n)]


def target_sentence(topic: str, parent_topic: str, attrs: ImageAttributes) -> str:
    """The templated summary of a target section (the only text naming visual attributes)."""
    noun = attrs.shape if attrs.count == 1 else attrs.shape + "s"
    count = COUNT_WORDS[attrs.count - 1]
    return f"the {topic} section under {parent_topic} shows {count} {attrs.colour} {noun}."


#: The words of a target sentence (:func:`target_sentence`), in order.
TARGET_SLOTS: tuple[str, ...] = ("topic", "parent", "count", "colour", "shape")
_TARGET = re.compile(
    r"^the (?P<topic>\S+) section under (?P<parent>\S+) shows (?P<count>\S+) (?P<colour>\S+) "
    r"(?P<shape>\S+?)s?\.?$"
)


def parse_target_sentence(text: str) -> dict[str, str] | None:
    """The slots of a sentence shaped like :func:`target_sentence` (the shape's plural ``s``
    and the full stop are optional), or None for any other text."""
    match = _TARGET.match(text.strip())
    return None if match is None else match.groupdict()


def slot_accuracy(pairs: Iterable[tuple[str, str]]) -> dict[str, float]:
    """Per :data:`TARGET_SLOTS`, the share of ``(prediction, reference)`` pairs whose
    prediction has the reference's word there (an unparsable prediction misses every slot).

    Raises:
        ValueError: a reference is not a target sentence, or there are no pairs.
    """
    hits, total = dict.fromkeys(TARGET_SLOTS, 0), 0
    for prediction, reference in pairs:
        ref = parse_target_sentence(reference)
        if ref is None:
            raise ValueError(f"not a synthetic-docs target sentence: {reference!r}")
        pred = parse_target_sentence(prediction) or {}
        for slot in TARGET_SLOTS:
            hits[slot] += pred.get(slot) == ref[slot]
        total += 1
    if total == 0:
        raise ValueError("slot_accuracy needs at least one (prediction, reference) pair")
    return {slot: hits[slot] / total for slot in TARGET_SLOTS}


def _filler_first(sec: _Section, page_topic: str, rng: np.random.Generator) -> str:
    """A neutral first sentence for a non-target section (no attribute words)."""
    verb, noun = rng.choice(_VERBS), rng.choice(_NOUNS)
    return f"the {sec.topic} section {verb} the {noun}."


def _rest_sentence(sec: _Section, rng: np.random.Generator) -> str:
    """Body text containing the section's topic word (short: the raw layout reads up to a
    dozen sections)."""
    return f"the {sec.topic} was known to {rng.choice(_NOUNS)} of the {rng.choice(_PLACES)}."


@dataclass
class _Page:
    """A generated page: its SequenceExample bytes, image files to write, and metadata."""

    record: bytes
    images: list[tuple[str, str, ImageAttributes, int]]  # url, file name, attrs, section
    meta: dict


def _image_name(page: int, k: int) -> str:
    """File name of image ``k`` of ``page`` (every 4th page uses JPEG)."""
    return f"p{page:05d}_{k:03d}" + (".jpg" if page % 4 == 3 else ".png")


def _make_page(index: int, split: str, seed: int) -> _Page:
    """Generate page ``index`` (its content depends only on seed and index, not on the split)."""
    rng = np.random.default_rng([seed, 1, index])
    sections = _build_tree(rng)
    targets = _choose_targets(sections, rng)
    _assign_images(sections, targets, rng)
    page_topic = str(rng.choice(_PAGE_TOPICS))
    url = f"https://synthetic-wiki.local/page/{index:05d}"
    title = f"the {page_topic} of the {sections[0].topic}"
    # the record lists the sections in a random order (parent indices follow), so reading
    # order tells nothing of the tree: which section is a target's parent is in the graph only
    order = [int(i) for i in rng.permutation(len(sections))]  # record position -> section
    position = {sec: p for p, sec in enumerate(order)}
    seq: dict[str, list[list]] = {k: [] for k in _SEQUENCE_FIELDS}
    images: list[tuple[str, str, ImageAttributes, int]] = []
    for p, i in enumerate(order):
        sec = sections[i]
        names = [_image_name(index, len(images) + k) for k in range(len(sec.images))]
        urls = [f"https://synthetic-wiki.local/images/{n}" for n in names]
        images += [(u, n, a, p) for u, n, a in zip(urls, names, sec.images, strict=True)]
        first = (
            target_sentence(sec.topic, sections[sec.parent].topic, sec.images[0])
            if sec.is_target
            else _filler_first(sec, page_topic, rng)
        )
        parent = -1 if sec.parent < 0 else position[sec.parent]
        _append_section(seq, sec, parent, first, _rest_sentence(sec, rng), urls, len(images))
    verb, noun = rng.choice(_VERBS), rng.choice(_NOUNS)
    context = {
        "split": [split],
        "page_url": [url],
        "page_title": [title],
        "clean_page_description": [f"this {page_topic} {verb} the {noun}."],
    }
    meta = {
        "page": index,
        "page_url": url,
        "split": split,
        "targets": [
            {
                "section": position[t],
                "parent": position[sections[t].parent],
                "answer_url": _url_of(images, position[t]),
            }
            for t in targets
        ],
        "images": [{"url": u, "path": n, "section": s, **_attrs_dict(a)} for u, n, a, s in images],
    }
    return _Page(sequence_example(context, seq), images, meta)


_SEQUENCE_FIELDS = SEQUENCE_FIELDS  # the official WikiWeb2M per-section field names


def _append_section(
    seq: dict[str, list[list]],
    sec: _Section,
    parent: int,
    first: str,
    rest: str,
    urls: list[str],
    n_seen: int,
) -> None:
    """Append one section's entries to the sequence features (``parent``: its parent's
    record position, -1 at top level; captions "Figure <n>.")."""
    first_figure = n_seen - len(urls) + 1
    seq["section_title"].append([sec.topic])
    seq["section_depth"].append([sec.depth])
    seq["section_heading_level"].append([sec.depth + 2])
    seq["section_parent_index"].append([parent])
    seq["section_clean_1st_sentence"].append([first])
    seq["section_rest_sentence"].append([rest])
    seq["section_image_url"].append(urls)
    seq["section_image_captions"].append([f"Figure {first_figure + k}." for k in range(len(urls))])
    seq["is_section_summarization_sample"].append([int(sec.is_target)])


def _url_of(images: list[tuple[str, str, ImageAttributes, int]], section: int) -> str:
    """URL of the first image of ``section``."""
    return next(u for u, _, _, s in images if s == section)


def _attrs_dict(a: ImageAttributes) -> dict:
    """JSON-friendly attributes."""
    d = asdict(a)
    d["rgb"] = list(a.rgb)
    return d


def _page_splits(num_pages: int, seed: int) -> list[str]:
    """Split of each page: a seeded permutation, 10% val, 10% test, the rest train."""
    order = np.random.default_rng([seed, 0]).permutation(num_pages)
    n_val = n_test = round(0.1 * num_pages)
    splits = ["train"] * num_pages
    for rank, page in enumerate(order):
        if rank < n_val:
            splits[page] = "val"
        elif rank < n_val + n_test:
            splits[page] = "test"
    return splits


def _check_args(**kwargs: int) -> None:
    """ValueError unless every argument is an int >= its minimum (given as name=(value, min))."""
    for name, (value, low) in kwargs.items():  # type: ignore[misc]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _write_json(path: Path, obj: object) -> None:
    """Pretty, key-sorted JSON (deterministic bytes)."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_synthetic_docs(
    out_dir: str | os.PathLike[str],
    num_pages: int,
    image_size: int = 32,
    seed: int = 0,
    shards: int = 4,
    *,
    chunks: int = 1,
    map_chunks: MapChunks = None,
) -> dict:
    """Write a WikiWeb2M-shaped synthetic dataset (see the module docstring for the task).

    Layout::

        out_dir/wikiweb2m-{i:05d}.tfrecord.gz   gzipped SequenceExamples, one per page
        out_dir/images/<p{page}_{k}.png|jpg>    rendered images (every 4th page JPEG)
        out_dir/images/manifest.csv             url,path (path relative to images/)
        out_dir/metadata.jsonl                  per page: image attributes and targets
        out_dir/synthetic.json                  generator parameters and the returned counts

    Args:
        out_dir: output directory (created).
        num_pages: number of pages (>= 1); pages go to ``min(shards, num_pages)`` shards of
            consecutive pages.
        image_size: side of the square images in pixels (>= 8).
        seed: generator seed; page ``i``'s content depends only on ``seed`` and ``i``.
        shards: maximal number of TFRecord files (>= 1).
        chunks: pages are generated and their images rendered in this many chunks of
            consecutive pages (the output does not depend on it).
        map_chunks: ``map_chunks(fn, jobs)`` yields ``fn(job)`` for each job in order, possibly
            in parallel (the pipeline passes Ray tasks); default the builtin ``map``.

    Returns:
        ``{"pages", "sections", "images", "targets": {split: n}, "pages_per_split": {split: n},
        "shards": [file names]}``.
    """
    _check_args(num_pages=(num_pages, 1), image_size=(image_size, 8), shards=(shards, 1))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits = _page_splits(num_pages, seed)
    jobs = [
        [(int(i), splits[int(i)]) for i in chunk]
        for chunk in np.array_split(np.arange(num_pages), max(1, min(chunks, num_pages)))
    ]
    render = functools.partial(_make_pages, images_dir=out / "images", size=image_size, seed=seed)
    pages = [page for chunk in (map_chunks or map)(render, jobs) for page in chunk]
    shard_files = _write_doc_shards(out, pages, min(shards, num_pages))
    _write_manifest(out / "images", [(url, name) for p in pages for url, name, _, _ in p.images])
    with open(out / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps(p.meta, sort_keys=True) + "\n" for p in pages)
    counts = _doc_counts(pages, shard_files)
    params = {"num_pages": num_pages, "image_size": image_size, "seed": seed, "shards": shards}
    _write_json(out / "synthetic.json", _params("synthetic-docs", params, counts))
    return counts


def _params(kind: str, params: dict, counts: dict) -> dict:
    """Content of ``synthetic.json``."""
    return {"kind": kind, "version": GENERATOR_VERSION, "params": params, "counts": counts}


def _write_doc_shards(out: Path, pages: list[_Page], n_shards: int) -> list[str]:
    """Consecutive pages per shard; returns the file names."""
    names = []
    for i, chunk in enumerate(np.array_split(np.arange(len(pages)), n_shards)):
        name = f"wikiweb2m-{i:05d}.tfrecord.gz"
        _write_tfrecords(out / name, (pages[int(j)].record for j in chunk))
        names.append(name)
    return names


def _make_pages(
    indices: list[tuple[int, str]], images_dir: Path, size: int, seed: int
) -> list[_Page]:
    """Generate the pages ``(index, split)`` and render their images into ``images_dir``
    (each page's images from their own seeded generator: any chunking gives the same files)."""
    pages = []
    for index, split in indices:
        page = _make_page(index, split, seed)
        rng = np.random.default_rng([seed, 2, index])
        for _, name, attrs, _ in page.images:
            _save_image(render_image(attrs, size, rng), images_dir / name)
        pages.append(page)
    return pages


def _write_manifest(images_dir: Path, rows: list[tuple[str, str]]) -> None:
    """``manifest.csv`` (url,path) in page order."""
    with open(images_dir / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["url", "path"])
        writer.writerows(rows)


def _doc_counts(pages: list[_Page], shard_files: list[str]) -> dict:
    """Counts returned by :func:`write_synthetic_docs`."""
    targets = dict.fromkeys(("train", "val", "test"), 0)
    per_split = dict.fromkeys(("train", "val", "test"), 0)
    for p in pages:
        targets[p.meta["split"]] += len(p.meta["targets"])
        per_split[p.meta["split"]] += 1
    return {
        "pages": len(pages),
        "sections": sum(len(parse_sequence_example(p.record)[1]["section_title"]) for p in pages),
        "images": sum(len(p.images) for p in pages),
        "targets": targets,
        "pages_per_split": per_split,
        "shards": shard_files,
    }


# ------------------------------------------------------------------------------- products


def _sbm_edges(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Undirected stochastic-block-model edges ``[E, 2]`` (u < v, unique), min degree 1.

    About 4 within-community and 0.5 cross-community neighbours per node on average.
    """
    n = len(labels)
    members = [np.flatnonzero(labels == b) for b in range(labels.max() + 1)]
    src = rng.integers(0, n, size=2 * n)
    dst = np.array([rng.choice(members[labels[s]]) for s in src])
    cross = rng.integers(0, n, size=(n // 4, 2))
    pairs = np.concatenate([np.stack([src, dst], 1), cross])
    isolated = np.setdiff1d(np.arange(n), pairs.ravel())
    extra = [(i, int(rng.choice(members[labels[i]][members[labels[i]] != i]))) for i in isolated]
    if extra:
        pairs = np.concatenate([pairs, np.array(extra)])
    pairs = np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1)
    return np.unique(pairs, axis=0)


def _product_text(community: int, rng: np.random.Generator) -> str:
    """Title + one sentence; depends only on the community (never on colour or shape)."""
    noun = rng.choice(_PRODUCT_NOUNS[community % len(_PRODUCT_NOUNS)])
    brand, adj = rng.choice(_BRANDS), rng.choice(_ADJECTIVES)
    return f"{brand} {adj} {noun}. a {rng.choice(_ADJECTIVES)} {noun} for {rng.choice(_USES)} use."


def _product_labels(group: np.ndarray, family: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """class = family * G + plurality shape group of the neighbours (ties: the own group when
    it is among the most frequent, else the first of them)."""
    n, groups = len(group), len(SHAPE_GROUPS)
    votes = np.zeros((n, groups))
    for u, v in edges:
        votes[u, group[v]] += 1
        votes[v, group[u]] += 1
    top = votes.max(axis=1, keepdims=True)
    winners = votes == top
    own_wins = winners[np.arange(n), group]
    plurality = np.where(own_wins, group, winners.argmax(axis=1))
    return family * groups + plurality


def _zero_shot_classes(rng: np.random.Generator) -> list[int]:
    """One held-out class per shape group, each of a different colour (module docstring)."""
    groups = len(SHAPE_GROUPS)
    fams = rng.choice(len(PRODUCT_COLOURS), size=groups, replace=False)
    order = rng.permutation(groups)
    return sorted(int(f) * groups + int(g) for f, g in zip(fams, order, strict=True))


def _product_split(
    labels: np.ndarray, zero_shot: list[int], rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """80/10/10 over labeled nodes; zero-shot classes removed from train."""
    import torch  # not at import: page generation runs in light Ray workers

    labeled = rng.permutation(np.flatnonzero(labels >= 0))
    n_val = n_test = round(0.1 * len(labeled))
    val, test, train = labeled[:n_val], labeled[n_val : n_val + n_test], labeled[n_val + n_test :]
    train = train[~np.isin(labels[train], zero_shot)]
    return {
        name: torch.as_tensor(np.sort(idx), dtype=torch.long)
        for name, idx in (("train_idx", train), ("val_idx", val), ("test_idx", test))
    }


def write_synthetic_products(
    out_dir: str | os.PathLike[str], num_products: int, image_size: int = 32, seed: int = 0
) -> dict:
    """Write an MM-GRAPH-shaped synthetic co-purchase graph (see the module docstring).

    Layout::

        out_dir/nc_edges-nodeid.pt                 LongTensor [E, 2], undirected, u < v
        out_dir/labels-w-missing.pt                LongTensor [N], -1 = unlabeled (~10%)
        out_dir/split.pt                           {"train_idx", "val_idx", "test_idx"}
        out_dir/node_mapping.pt                    {asin: node id}
        out_dir/synthetic-products-raw-text.jsonl  {"asin", "raw_text"} per line, node order
        out_dir/images/{asin}.jpg
        out_dir/class_names.json, zero_shot_classes.json, metadata.jsonl, synthetic.json

    Args:
        out_dir: output directory (created).
        num_products: number of products (>= 20).
        image_size: image side in pixels (>= 8).
        seed: generator seed.

    Returns:
        ``{"products", "edges", "classes", "labeled", "split": {split: n},
        "zero_shot_classes", "images"}``.
    """
    _check_args(num_products=(num_products, 20), image_size=(image_size, 8))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 3])
    n = num_products
    community = rng.integers(0, max(2, round(n / 60)), size=n)
    edges = _sbm_edges(community, rng)
    family = rng.integers(0, len(PRODUCT_COLOURS), size=n)
    group = rng.integers(0, len(SHAPE_GROUPS), size=n)  # index into SHAPE_GROUPS
    labels = _product_labels(group, family, edges)
    labels[rng.random(n) < 0.1] = -1
    zero_shot = _zero_shot_classes(rng)
    split = _product_split(labels, zero_shot, rng)
    asins = [f"B{seed % 100:02d}{i:07d}" for i in range(n)]
    texts = [_product_text(int(c), rng) for c in community]
    attrs = _write_product_images(out / "images", asins, family, group, image_size, rng)
    _save_product_files(out, asins, texts, edges, labels, split, zero_shot)
    with open(out / "metadata.jsonl", "w") as f:
        for i, a in enumerate(attrs):
            row = {"asin": asins[i], "node": i, "community": int(community[i]), **_attrs_dict(a)}
            f.write(json.dumps({**row, "group": list(SHAPE_GROUPS)[group[i]]}, sort_keys=True))
            f.write("\n")
    counts = {
        "products": n,
        "edges": len(edges),
        "classes": len(PRODUCT_CLASS_NAMES),
        "labeled": int((labels >= 0).sum()),
        "split": {k[: -len("_idx")]: int(v.numel()) for k, v in split.items()},
        "zero_shot_classes": zero_shot,
        "images": n,
    }
    params = {"num_products": n, "image_size": image_size, "seed": seed}
    _write_json(out / "synthetic.json", _params("synthetic-products", params, counts))
    return counts


def _write_product_images(
    images_dir: Path,
    asins: Sequence[str],
    family: np.ndarray,
    group: np.ndarray,
    size: int,
    rng: np.random.Generator,
) -> list[ImageAttributes]:
    """Render ``images/{asin}.jpg``: own colour family, a shape of the own group."""
    families, groups = list(PRODUCT_COLOURS), list(SHAPE_GROUPS)
    out = []
    for i, asin in enumerate(asins):
        colour = families[family[i]]
        attrs = ImageAttributes(
            colour=colour,
            shape=str(rng.choice(SHAPE_GROUPS[groups[group[i]]])),
            count=int(rng.integers(1, 3)),
            texture=str(rng.choice(TEXTURES)),
            rgb=_jitter_rgb(PRODUCT_COLOURS[colour], rng),
        )
        _save_image(render_image(attrs, size, rng), images_dir / f"{asin}.jpg")
        out.append(attrs)
    return out


def _save_product_files(
    out: Path,
    asins: list[str],
    texts: list[str],
    edges: np.ndarray,
    labels: np.ndarray,
    split: dict[str, torch.Tensor],
    zero_shot: list[int],
) -> None:
    """The ``.pt`` files (plain tensors and dicts: ``torch.load(weights_only=True)`` works),
    raw-text jsonl, class names and zero-shot classes."""
    import torch

    torch.save(torch.as_tensor(edges, dtype=torch.long).reshape(-1, 2), out / "nc_edges-nodeid.pt")
    torch.save(torch.as_tensor(labels, dtype=torch.long), out / "labels-w-missing.pt")
    torch.save(split, out / "split.pt")
    torch.save({a: i for i, a in enumerate(asins)}, out / "node_mapping.pt")
    with open(out / "synthetic-products-raw-text.jsonl", "w") as f:
        f.writelines(
            json.dumps({"asin": a, "raw_text": t}) + "\n" for a, t in zip(asins, texts, strict=True)
        )
    _write_json(out / "class_names.json", PRODUCT_CLASS_NAMES)
    _write_json(out / "zero_shot_classes.json", zero_shot)


# --------------------------------------------------------------------------------- corpus


def _doc_texts(out: Path, splits: Sequence[str] | None) -> Iterator[str]:
    """Every text field of every page of ``splits`` (all when None) in the docs shards."""
    for shard in sorted(out.glob("wikiweb2m-*.tfrecord*")):
        for record in iter_tfrecords(shard):
            context, seq = parse_sequence_example(record)
            if splits is not None and context.get("split", [None])[0] not in splits:
                continue
            for key in ("page_title", "clean_page_description"):
                yield from context.get(key, [])
            for key in (
                "section_title",
                "section_clean_1st_sentence",
                "section_rest_sentence",
                "section_image_captions",
            ):
                for entry in seq.get(key, []):
                    yield from entry


def _product_texts(out: Path) -> Iterator[str]:
    """Raw texts of the products, then the class names."""
    for path in sorted(out.glob("*-raw-text.jsonl")):
        with open(path) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["raw_text"]
    names = out / "class_names.json"
    if names.exists():
        yield from json.loads(names.read_text())


def corpus_texts(
    out_dir: str | os.PathLike[str], splits: Sequence[str] | None = ("train",)
) -> Iterator[str]:
    """The texts of a synthetic dataset written by this module: the tiny backbones' corpus.

    Docs: page titles and descriptions, section titles, first and rest sentences, captions of
    the pages in ``splits`` (default train only: val/test target sentences never reach the
    frozen LM; ``None`` = every page). Products: raw texts of all nodes (inputs, not targets)
    and the class names.

    Raises:
        ValueError: if ``out_dir`` holds neither dataset.
    """
    out = Path(out_dir)
    meta = out / "synthetic.json"
    kind = json.loads(meta.read_text()).get("kind") if meta.exists() else None
    if kind == "synthetic-docs" or (kind is None and any(out.glob("wikiweb2m-*.tfrecord*"))):
        return _doc_texts(out, splits)
    if kind == "synthetic-products" or (kind is None and any(out.glob("*-raw-text.jsonl"))):
        return _product_texts(out)
    raise ValueError(f"{out}: no synthetic dataset (no synthetic.json, shards or raw-text file)")


# ------------------------------------------------------------------- LM copy documents


#: Copy documents come from pages of this index on (a dataset never has as many): fresh
#: pages from the generator's own distribution, never one of the dataset's.
_COPY_PAGE_OFFSET = 1_000_000


def _docs_copy_documents(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (context, answer) pairs: fresh pages read by the real WikiWeb2M reader and sample
    builder (tau 2, the default caps, 1 to 12 text nodes), laid out by the raw layout with
    the hint where ``after_text`` puts the graph tokens (after the cue, before the answer)."""
    from g4mm.config import DataConfig
    from g4mm.data.records import ReadStats
    from g4mm.data.samples import build_samples
    from g4mm.data.wikiweb2m import read_wikiweb2m_record
    from g4mm.model.layout import LayoutSpec, TokenGroup, layout_text

    cfg = DataConfig(seed=seed)
    groups = (TokenGroup("queries", None, 1),)
    rng = np.random.default_rng([seed, 8])
    docs: list[tuple[str, str]] = []
    page_index = _COPY_PAGE_OFFSET
    while len(docs) < n:
        page = _make_page(page_index, "train", seed)
        page_index += 1
        manifest = {url: Path("/copy-documents") / name for url, name, _, _ in page.images}
        src = read_wikiweb2m_record(
            page.record, f"copy:{page_index}", "/copy-documents", manifest, ReadStats(),
            image_cache=dict.fromkeys(manifest.values(), "ok"),
        )  # fmt: skip
        for row in build_samples(src, cfg) if src is not None else []:
            target = str(row["target_text"])
            hint = " " + target[target.index(" under ") + 1 : -1]  # "under <parent> shows ..."
            # neighbourhoods of every size up to the caps (1 to 12 text nodes)
            texts = int(rng.integers(1, cfg.max_text_nodes + 1))
            spec = LayoutSpec("raw", "after_text", 10**9, texts, cfg.max_image_nodes, groups)
            context = layout_text(row, spec, lambda _, hint=hint: hint)
            docs.append((context, target))
    return docs[:n]


def _products_copy_document(rng: np.random.Generator) -> tuple[str, str]:
    """(context, class name) in the products' raw layout, ``"Product: <text> <neighbours'
    texts> Category:"``, with the class name where ``after_text`` puts the graph tokens."""
    name = str(rng.choice(PRODUCT_CLASS_NAMES))
    texts = [
        _product_text(int(rng.integers(len(_PRODUCT_NOUNS))), rng)
        for _ in range(1 + int(rng.integers(0, 12)))
    ]
    rest = "".join(" " + t for t in texts[1:])
    return f"Product: {texts[0]}{rest} Category: {name}", name


def lm_copy_documents(kind: str, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` in-context copy documents ``(context, answer)`` in the format of ``kind``'s LM
    inputs: what the raw layout (:mod:`g4mm.model.layout`) puts before the target.

    The context is a layout of a fresh sample (a page or products drawn afresh: nothing of
    the dataset) with a *hint* where the graph tokens will go (the words the answer needs
    that the text lacks: for docs ``"under <parent> shows <count> <colour> <shape>s"``, for
    products the class name); the answer is the target text. Pretraining the tiny LM on them
    (loss on the answer only) gives it the in-context copying a pretrained OPT brings: a
    frozen LM that cannot read words from its context cannot be steered by soft tokens
    either, and every variant would collapse to the prior. The hint is the only source of
    the parent topic and of the visual words, so the LM learns to copy them, not to guess
    them. It stands where ``after_text`` puts the graph tokens, the placement the embedded
    benchmark uses (:mod:`g4mm.model.layout` says why there).
    """
    if kind == "synthetic-docs":
        return _docs_copy_documents(n, seed)
    if kind == "synthetic-products":
        rng = np.random.default_rng([seed, 7])
        return [_products_copy_document(rng) for _ in range(n)]
    raise ValueError(
        f"lm_copy_documents: unknown kind {kind!r} (synthetic-docs|synthetic-products)"
    )
