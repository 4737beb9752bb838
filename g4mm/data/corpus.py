"""Build the tiny offline backbones from a dataset's own corpus, once, into the artifact dir.

The tokenizer is trained on the corpus, then a small OPT-architecture LM is pretrained briefly
on it (next-token prediction over packed 64-token chunks) mixed with in-context copy documents
(loss on the answer only), so the frozen LM is a language model of the domain that can copy
words from its context, the capability soft prompts steer, rather than random weights.
The vision encoder is a small CLIP ViT pretrained
briefly to recognise colour, shape, count and texture on freshly rendered images (never the
dataset's own images), the role CLIP's pretraining plays for the paper. Both are saved with
``save_pretrained`` and then loaded through the backbone registry like any HF checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from g4mm.data.synthetic import (
    COLOURS,
    PRODUCT_COLOURS,
    SHAPES,
    TEXTURES,
    random_render_attributes,
    render_image,
)
from g4mm.model.backbones import (
    BACKBONES,
    BUILD_STAMP,
    BUILD_VERSION,
    plain_recipe,
    read_stamp,
    stamp_is_current,
)
from g4mm.model.tiny import tiny_clip_vision, tiny_opt, train_tokenizer

log = logging.getLogger(__name__)

#: Copy documents held out of LM pretraining to measure its copy accuracy.
COPY_PROBE = 50
#: Held-out copy accuracy a tiny LM pretrained with copy documents must reach, or the build
#: fails: a frozen LM that cannot copy from its context cannot be steered by soft tokens.
COPY_GATE = 0.9
#: Torch threads the tiny backbones are built with, whatever this machine or process has:
#: float reductions split by thread count, and the trajectory with them (measured: one
#: build copied with 1 thread and not with 2). Pinned, a build is the same on any machine
#: with the same CPU kernels.
BUILD_THREADS = 2
#: Most pretraining steps of the tiny LM. It learns to copy suddenly, one slot of the answer
#: at a time, at steps that vary with the seed, so it trains until a probe of copy documents
#: says it copies, at most this long. Measured on the embedded benchmark's copy documents:
#: with a one-cycle schedule over 1,000 steps two of three seeds still missed one or two of
#: the five slots at the end (held-out 0.62, 0.34); at a constant rate after warm-up both
#: copied every slot by step 800 and kept doing so to step 2,000. With the raw layout's copy
#: documents (this cap's schedule, 6,000 documents): seed 0 ready at step 900 (1,200 steps,
#: held-out 1.00, 160 s on 2 idle cores), seed 1 at 2,200 (0.98, 329 s), seed 2 not by 2,700
#: (0.54 at a 3,000 cap; 0.96 after 4,000 under an earlier rule), hence the cap.
LM_STEPS = 6000
#: Share of the probe's copy documents the LM must copy exactly for its learning rate to
#: start decaying (the last 300 steps: :func:`pretrain_lm`).
COPY_READY = 0.8


class TinyLMBuildError(RuntimeError):
    """The tiny LM did not reach :data:`COPY_GATE`; the message gives what it reached."""


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block, the previous count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _copy_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded ``context + answer`` rows; labels only on the answer tokens."""
    width = max(len(c) + len(a) for c, a in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (context, answer) in enumerate(pairs):
        n = len(context) + len(answer)
        ids[row, :n] = torch.tensor(context + answer)
        labels[row, len(context) : n] = torch.tensor(answer)
        mask[row, :n] = 1
    return ids, labels, mask


def pretrain_lm(
    model: torch.nn.Module,
    token_ids: list[int],
    copy_pairs: list[tuple[list[int], list[int]]] | None = None,
    steps: int = 600,
    seq_len: int = 64,
    corpus_rows: int = 8,
    copy_rows: int = 24,
    lr: float = 3e-3,
    seed: int = 0,
    pad_id: int = 0,
    warmup: int = 100,
    ready: Callable[[], bool] | None = None,
    check_every: int = 100,
    decay: int = 300,
) -> list[float]:
    """Next-token pretraining; returns the per-step losses.

    Each step sums two mean losses: ``corpus_rows`` random ``seq_len``-token windows of the
    packed corpus ``token_ids`` (every token predicted), and ``copy_rows`` in-context copy
    documents ``(context ids, answer ids)`` with the loss on the answer tokens only, so that
    the whole signal of those rows goes into copying from the context.

    AdamW, learning rate warm-up / stable / decay: linear warm-up over ``warmup`` steps, then
    ``lr`` until ``ready`` (asked every ``check_every`` steps) says the model has learnt what
    it must, then a linear decay to 0 over ``decay`` steps, and the end. Without ``ready``, or
    when it never says so, the decay takes the last ``decay`` of ``steps``: a tiny LM learns to
    copy suddenly, at a step that varies with the seed, and at a constant rate until then
    (measured: a one-cycle schedule over a fixed length ended some seeds mid-transition).
    """
    data = torch.tensor(token_ids, dtype=torch.long)
    if data.numel() <= seq_len + 1:
        raise ValueError(f"corpus has {data.numel()} tokens: too few to pretrain on")
    decay = min(decay, steps)
    decay_from = [steps - decay]  # moved earlier once ``ready``

    def factor(step: int) -> float:
        start = decay_from[0]
        return min(1.0, (step + 1) / warmup, max(0.0, (start + decay - step) / decay))

    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    losses = []
    step = 0
    while step < decay_from[0] + decay:
        starts = torch.randint(0, data.numel() - seq_len - 1, (corpus_rows,), generator=gen)
        batch = torch.stack([data[s : s + seq_len] for s in starts.tolist()])  # (B, L)
        loss = model(input_ids=batch, labels=batch).loss
        if copy_pairs:
            picks = torch.randint(0, len(copy_pairs), (copy_rows,), generator=gen).tolist()
            ids, labels, mask = _copy_batch([copy_pairs[i] for i in picks], pad_id)
            loss = loss + model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if ready is not None and step < decay_from[0] and step % check_every == 0:
            if ready():
                decay_from[0] = step
            model.train()
        schedule.step()
        losses.append(loss.item())
    return losses


def copy_accuracy(
    model: torch.nn.Module, tokenizer: Any, pairs: list[tuple[str, str]], max_new_tokens: int = 24
) -> float:
    """Fraction of copy documents whose answer greedy decoding reproduces exactly."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for context, answer in pairs:
            ids = tokenizer(context, return_tensors="pt")["input_ids"]
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)  # fmt: skip
            text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
            correct += text.strip() == answer.strip()
    return correct / max(1, len(pairs))


def copied_exactly(
    model: torch.nn.Module, pairs: list[tuple[list[int], list[int]]], pad_id: int
) -> float:
    """:func:`copy_accuracy` in one teacher-forced pass: a document counts when the argmax at
    every answer position (its EOS included) is the answer's token, which is exactly when
    greedy decoding reproduces the answer. ``pairs`` as :func:`_copy_ids` gives them."""
    if not pairs:
        return 0.0
    model.eval()
    ids, labels, mask = _copy_batch(pairs, pad_id)
    with torch.no_grad():
        predicted = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
    wanted = labels[:, 1:]
    hits = ((predicted == wanted) | (wanted == -100)).all(dim=1)
    return hits.float().mean().item()


VISION_TASKS: dict[str, list] = {
    "colour": [*COLOURS, *PRODUCT_COLOURS],
    "shape": [*SHAPES, "ring"],
    "count": [1, 2, 3],
    "texture": list(TEXTURES),
}


def pretrain_vision(
    vision: torch.nn.Module,
    processor: Any,
    image_size: int,
    steps: int = 200,
    pool_size: int = 1024,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Multi-task attribute classification on rendered images, through the pooled output.

    One linear head per attribute in :data:`VISION_TASKS` on ``pooler_output``; the heads are
    thrown away afterwards. Returns the final training accuracy per attribute.
    """
    rng = np.random.default_rng(seed)
    attrs = [random_render_attributes(rng) for _ in range(pool_size)]
    images = [render_image(a, image_size, rng) for a in attrs]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]  # (P, 3, H, W)
    labels = {
        task: torch.tensor([values.index(getattr(a, task)) for a in attrs])
        for task, values in VISION_TASKS.items()
    }
    width = vision.config.hidden_size
    heads = torch.nn.ModuleDict(
        {t: torch.nn.Linear(width, len(v)) for t, v in VISION_TASKS.items()}
    )
    params = [*vision.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    vision.train()
    correct = dict.fromkeys(VISION_TASKS, 0.0)
    for step in range(steps):
        idx = torch.randint(0, pool_size, (batch_size,), generator=gen)
        pooled = vision(pixel_values=pixels[idx]).pooler_output  # (B, D)
        loss = torch.zeros(())
        for task, head in heads.items():
            logits = head(pooled)
            loss = loss + torch.nn.functional.cross_entropy(logits, labels[task][idx])
            if step == steps - 1:
                correct[task] = (logits.argmax(-1) == labels[task][idx]).float().mean().item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
    vision.eval()
    return correct


@contextlib.contextmanager
def backbone_lock(directory: Path) -> Iterator[None]:
    """One process at a time builds, swaps or removes the backbone at ``directory`` (two runs,
    or a run's driver and its workers, sharing a ``data.artifact_dir``): an exclusive
    ``flock`` on ``.<name>.lock`` beside it; the others wait, then find it current."""
    import fcntl

    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def recipe_tag(recipe: Mapping[str, Any] | None) -> str:
    """12 hex characters naming a recipe (the stash directory ``<dir>@<tag>`` of its build)."""
    import hashlib

    text = json.dumps(None if recipe is None else plain_recipe(dict(recipe)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _stash(directory: Path, recipe: Mapping[str, Any] | None) -> Path:
    return directory.with_name(f"{directory.name}@{recipe_tag(recipe)}")


def _put_aside(directory: Path) -> None:
    """Move the build in ``directory`` to the stash of its own recipe (kept for a later run
    of that recipe); a stash of the same recipe already there is replaced."""
    if not directory.exists():
        return
    stamp = read_stamp(directory) or {}
    aside = _stash(directory, stamp.get("recipe"))
    if aside.exists():
        shutil.rmtree(aside)
    directory.rename(aside)


def _atomic_save(target: Path, save) -> None:
    """Save into a temporary sibling directory, then rename: readers never see half a model.
    The caller holds :func:`backbone_lock`; a build already in ``target`` is put aside."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    try:
        save(tmp)
        _put_aside(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _stashed(directory: Path, recipe: Mapping[str, Any] | None) -> bool:
    """Whether a current build of ``recipe`` waits aside (``<dir>@<tag>``)."""
    return recipe is not None and _is_current_build(_stash(directory, recipe), dict(recipe))


def _restore_stashed(directory: Path, recipe: Mapping[str, Any] | None) -> bool:
    """Swap the stashed build of ``recipe`` into ``directory`` (the one there put aside);
    False when there is none current."""
    stash = _stash(directory, recipe)
    if recipe is None or not _is_current_build(stash, dict(recipe)):
        return False
    _put_aside(directory)
    stash.rename(directory)
    return True


def _is_current_build(directory: Path, recipe: dict | None = None) -> bool:
    """A complete backbone directory whose stamp is current (:func:`stamp_is_current`)."""
    stamp = read_stamp(directory)
    return (
        (directory / "config.json").is_file()
        and stamp is not None
        and stamp_is_current(stamp, recipe)
    )


def _stamp(path: Path, recipe: dict | None, **info: Any) -> None:
    stamp = {"version": BUILD_VERSION, "recipe": None if recipe is None else plain_recipe(recipe)}
    (path / BUILD_STAMP).write_text(json.dumps({**stamp, **info}, indent=1))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def recipe_differences(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str:
    """What differs between two recipes, e.g. ``source.num_pages 24 -> 800`` (at most 4)."""
    a, b = _flat(plain_recipe(dict(old or {}))), _flat(plain_recipe(dict(new or {})))
    diffs = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]  # fmt: skip
    more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
    return "; ".join(diffs[:4]) + more


def _switch_note(kind: str, directory: Path, recipe: dict | None, restored: bool) -> None:
    """Log that the tiny backbone in ``directory`` is switched to another recipe, naming what
    differs; the one replaced is kept aside for its own recipe."""
    old = (read_stamp(directory) or {}).get("recipe")
    if recipe is None or old is None or old == plain_recipe(recipe):
        return
    what = "restoring the build kept for it" if restored else "building it"
    log.warning(
        "the tiny %s in %s was built from another recipe (%s); %s, and keeping the other "
        "as %s", kind, directory, recipe_differences(old, recipe), what,
        _stash(directory, old).name,
    )  # fmt: skip


def _ensure_built(
    kind: str, directory: Path, recipe: dict | None, build: Callable[[], Callable[[Path], None]]
) -> str:
    """``cached`` (current there), ``restored`` (this recipe's build swapped back in) or
    ``built`` (``build()`` trains and returns the function that saves it), under
    :func:`backbone_lock`."""
    with backbone_lock(directory):
        if _is_current_build(directory, recipe):
            return "cached"
        restored = _stashed(directory, recipe)
        _switch_note(kind, directory, recipe, restored=restored)
        if restored:
            _restore_stashed(directory, recipe)
            return "restored"
        _atomic_save(directory, build())
        return "built"


def _pack(tokenizer: Any, texts: Iterable[str]) -> list[int]:
    """``<s> text </s>`` for every text, concatenated."""
    eos = tokenizer.eos_token_id
    return [i for text in texts for i in tokenizer(text)["input_ids"] + [eos]]


def _copy_ids(tokenizer: Any, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Tokenised like Graph4MM's LM input: ``<s> context`` then ``answer </s>``."""
    eos = tokenizer.eos_token_id
    return [
        (tokenizer(c)["input_ids"], tokenizer(a, add_special_tokens=False)["input_ids"] + [eos])
        for c, a in pairs
    ]


def build_tiny_lm(
    corpus: Iterable[str],
    copy_docs: Sequence[tuple[str, str]] = (),
    steps: int = LM_STEPS,
    seed: int = 0,
    gate: float = COPY_GATE,
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Tokenizer + tiny OPT LM pretrained on ``corpus`` and ``copy_docs``, with
    :data:`BUILD_THREADS` threads (the same result whatever the caller's thread count).

    With more than 8x :data:`COPY_PROBE` copy documents, the last :data:`COPY_PROBE` are held
    out and the LM's exact-match copy accuracy on them is measured (the gate), and the
    :data:`COPY_PROBE` before them decide when the learning rate decays: every 100 steps, once
    the LM copies :data:`COPY_READY` of those, 300 more steps decay it to 0 (``steps`` is the
    cap).

    Returns:
        ``(model, tokenizer, info)``; ``info`` (the build stamp's statistics): ``steps``,
        ``loss`` (last step), ``copy_docs``, ``held_out_copy_accuracy`` (None without a
        probe), ``threads``.

    Raises:
        TinyLMBuildError: the held-out copy accuracy is below ``gate``.
    """
    texts = [t for t in corpus if t and t.strip()]
    copies = list(copy_docs)
    probing = len(copies) > 8 * COPY_PROBE
    held_out = copies[-COPY_PROBE:] if probing else []
    probe = copies[-2 * COPY_PROBE : -COPY_PROBE] if probing else []
    train_copies = copies[: len(copies) - len(held_out) - len(probe)]
    with torch_threads(BUILD_THREADS):
        torch.manual_seed(seed)
        tokenizer = train_tokenizer(texts + [" ".join(p) for p in train_copies[:5000]])
        model = tiny_opt(tokenizer)

        probe_ids = _copy_ids(tokenizer, probe)

        checks = [0]

        def copying() -> bool:  # when to decay, on other documents than the gate's
            accuracy = copied_exactly(model, probe_ids, tokenizer.pad_token_id)
            checks[0] += 1
            print(f"[tiny LM] step {100 * checks[0]} of at most {steps}: probe copy accuracy "
                  f"{accuracy:.2f} (decays from {COPY_READY})", flush=True)  # long: show it
            return accuracy >= COPY_READY

        losses = pretrain_lm(
            model, _pack(tokenizer, texts), _copy_ids(tokenizer, train_copies),
            steps=steps, seed=seed, pad_id=tokenizer.pad_token_id,
            ready=copying if probe else None,
        )  # fmt: skip
        accuracy = copy_accuracy(model, tokenizer, held_out) if held_out else None
    model.eval()
    info = {
        "steps": len(losses), "max_steps": steps, "loss": losses[-1],
        "copy_docs": len(copies), "held_out_copy_accuracy": accuracy,
        "threads": BUILD_THREADS,
    }  # fmt: skip
    if accuracy is not None and accuracy < gate:
        raise TinyLMBuildError(
            f"the tiny LM copies {accuracy:.2f} of {len(held_out)} held-out copy documents "
            f"exactly after {steps} pretraining steps (seed {seed}); it must reach {gate}: "
            "a frozen LM that cannot copy from its context cannot be steered by soft "
            "tokens, and every variant would decode the prior. Nothing was saved. Try more "
            "steps (g4mm.data.corpus.LM_STEPS) or another data.seed, and report it."
        )
    return model, tokenizer, info


def ensure_tiny_backbones(
    cfg: Any,
    corpus: Iterable[str],
    pretrain_steps: int = LM_STEPS,
    image_size: int | None = None,
    vision_steps: int = 200,
    copy_docs: Sequence[tuple[str, str]] = (),
    recipes: Mapping[str, dict] | None = None,
) -> dict[str, str]:
    """Build whichever of the ``tiny`` LM / vision backbones ``cfg.model`` asks for and lacks.

    The LM is pretrained on ``corpus`` mixed with ``copy_docs`` (in-context copy documents,
    :func:`g4mm.data.synthetic.lm_copy_documents`), which teach it to copy words from its
    context, the capability soft tokens rely on. A directory built by an older build
    (:data:`~g4mm.model.backbones.BUILD_VERSION`) is rebuilt, and so is one built from another
    of ``recipes`` (``{"lm": ..., "vision": ...}``: what each is built from, recorded in its
    stamp; :func:`g4mm.pipeline.cache.tiny_recipes`), e.g. a tiny LM trained on another
    dataset's corpus in a shared ``data.artifact_dir`` (logged).

    Builds of other recipes are kept side by side (``tiny-lm@<tag>``, :func:`recipe_tag`):
    switching configs that share a ``data.artifact_dir`` swaps the right build back in (two
    renames) instead of training it again, and logs what differs. Building and swapping
    happen under :func:`backbone_lock`.

    Returns ``{"lm": status, "vision": status}`` with status ``built``, ``cached``,
    ``restored`` (a build kept aside for this recipe) or ``not tiny``. ``cfg``: an
    ``ExperimentConfig``.
    """
    from g4mm.console import quiet_transformers_bars

    quiet_transformers_bars()  # save_pretrained's "Writing model shards" bar, twice a build
    root = Path(cfg.data.artifact_dir)
    recipes = recipes or {}
    status = {"lm": "not tiny", "vision": "not tiny"}
    if cfg.model.lm == "tiny":

        def build_lm() -> Callable[[Path], None]:
            start = time.perf_counter()
            model, tokenizer, info = build_tiny_lm(
                corpus, copy_docs, steps=pretrain_steps, seed=cfg.data.seed
            )
            log.info(
                "built tiny LM in %.1fs: loss %.2f, held-out copy accuracy %s",
                time.perf_counter() - start, info["loss"], info["held_out_copy_accuracy"],
            )  # fmt: skip

            def save(path: Path) -> None:
                model.save_pretrained(path)
                tokenizer.save_pretrained(path)
                _stamp(path, recipes.get("lm"), **info)

            return save

        lm_dir = root / BACKBONES[("lm", "tiny")].local_subdir
        status["lm"] = _ensure_built("LM", lm_dir, recipes.get("lm"), build_lm)
    if cfg.model.vision == "tiny":

        def build_vision() -> Callable[[Path], None]:
            size = image_size or cfg.data.image_size
            start = time.perf_counter()
            with torch_threads(BUILD_THREADS):
                torch.manual_seed(cfg.data.seed)
                vision, processor = tiny_clip_vision(size)
                accuracy = pretrain_vision(vision, processor, size, steps=vision_steps,
                                           seed=cfg.data.seed)  # fmt: skip
            log.info("built tiny vision encoder in %.1fs: train accuracy %s",
                     time.perf_counter() - start, accuracy)  # fmt: skip

            def save(path: Path) -> None:
                vision.save_pretrained(path)
                processor.save_pretrained(path)
                _stamp(path, recipes.get("vision"), steps=vision_steps, train_accuracy=accuracy)

            return save

        vision_dir = root / BACKBONES[("vision", "tiny")].local_subdir
        status["vision"] = _ensure_built(
            "vision encoder", vision_dir, recipes.get("vision"), build_vision
        )
    return status
