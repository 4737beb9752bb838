"""What the frozen LM reads (g4mm.model.layout): the raw layout of every variant, both token
placements, the budget, generation, and the pooled ablation against the model it replaces."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_model import HPARAMS

from g4mm.config import GRAPH4MM_VARIANTS, ConfigError, DataConfig, ExperimentConfig
from g4mm.data.collate import GraphCollator
from g4mm.data.records import ReadStats
from g4mm.data.samples import build_samples
from g4mm.data.schema import feature_key
from g4mm.data.synthetic import write_synthetic_docs
from g4mm.data.wikiweb2m import iter_wikiweb2m
from g4mm.model import VARIANTS, Graph4MM, build_adapter
from g4mm.model.encoders import image_feature_dim, text_feature_dim
from g4mm.model.layout import (
    HOP_PHRASE,
    LayoutSpec,
    TokenGroup,
    build_layouts,
    describe,
    layout_text,
)
from g4mm.model.tiny import tiny_llama, tiny_opt, train_tokenizer


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    """Sample rows of synthetic WikiWeb2M pages through the real reader and sample builder."""
    root = tmp_path_factory.mktemp("pages")
    write_synthetic_docs(root, num_pages=6, image_size=16, seed=3)
    out = []
    for shard in sorted(root.glob("wikiweb2m-*.tfrecord.gz")):
        for src in iter_wikiweb2m(shard, root / "images", ReadStats()):
            out.extend(build_samples(src, DataConfig(seed=3)))
    assert len(out) >= 6
    return out


@pytest.fixture(scope="module")
def tok(rows):
    """A BPE trained on these pages' words (one token a word, mostly)."""
    texts = [t for r in rows for t in (*r["text_segments"], *r["image_captions"], r["target_text"])]
    return train_tokenizer([*texts, "summarize: , summary:"] * 4, vocab_size=600)


@pytest.fixture(scope="module")
def backbones(tok, tiny_backbones):
    """(opt, llama, vision, processor): tiny LMs of ``tok``'s vocabulary, 512 positions."""
    torch.manual_seed(0)
    opt = tiny_opt(tok, hidden_size=32, num_layers=2, num_heads=2, max_positions=512)
    llama = tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, max_positions=512)
    return opt.eval(), llama.eval(), *tiny_backbones[2:]


def features(rows: list[dict], text_dim: int, image_dim: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    texts = {t for r in rows for t in r["text_nodes"]}
    images = {p for r in rows for p in r["image_paths"]}
    return (
        {feature_key("text", t): rng.normal(size=text_dim).astype(np.float32) for t in texts},
        {feature_key("image", p): rng.normal(size=image_dim).astype(np.float32) for p in images},
    )


def adapter_for(variant: str, context: str, placement: str, backbones=None, k: int = 3):
    if backbones is None:
        dims = dict(text_dim=8, image_dim=8, lm_dim=8)
    else:
        lm, vision = backbones
        dims = dict(
            text_dim=text_feature_dim(lm), image_dim=image_feature_dim(vision),
            lm_dim=lm.get_input_embeddings().embedding_dim,
        )  # fmt: skip
    return build_adapter(
        variant, **dims, context=context, token_placement=placement, tokens_per_image=k,
        **HPARAMS,
    )  # fmt: skip


def spec_for(adapter, context="raw", placement="at_images", budget=10_000) -> LayoutSpec:
    return LayoutSpec(context, placement, budget, 12, 5, tuple(adapter.token_groups))


def reading_order(row: dict) -> list[int]:
    """Text nodes as the layout must read them: the target's own first, then text_order."""
    others = sorted(range(1, len(row["text_segments"])), key=lambda i: row["text_order"][i])
    return [0, *others]


@pytest.mark.parametrize("variant", VARIANTS)
def test_raw_layout_reads_the_subgraph_text_in_document_order(rows, tok, variant):
    row = rows[0]
    adapter = adapter_for(variant, "raw", "at_images", k=3)
    spec = spec_for(adapter)
    lay = build_layouts([row], spec, tok)[0]
    text = describe(lay.ids, lay.slots, spec.table, tok)
    opening = text.removeprefix(tok.bos_token).lstrip()  # the BOS, then the lead
    assert row["text_hops"][0] == 0 and opening.startswith("summarize: ")
    assert text.endswith("summary:") and not lay.truncated
    # every text node's segment, in reading order (the page before sections it precedes)
    positions = [text.index(row["text_segments"][i]) for i in reading_order(row)]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert row["target_text"] not in text  # the summary sentence is nowhere
    assert row["text_segments"][0] in text and "shows" not in text
    images = len(row["image_paths"])
    slots = sum(s >= 0 for s in lay.slots)
    if variant == "text_only":
        assert slots == 0 and "graph tokens" not in text
    else:  # k tokens per image, each run right after its image's caption
        assert slots == 3 * images
        for j, caption in enumerate(row["image_captions"]):
            assert f"{caption}<3 graph tokens: image {j}>" in text


@pytest.mark.parametrize("variant", ["hop_diffused", "mmgl_concat"])
def test_after_text_puts_every_graph_token_after_the_cue(rows, tok, variant):
    row = rows[1]
    adapter = adapter_for(variant, "raw", "after_text", k=2)
    spec = spec_for(adapter, placement="after_text")
    lay = build_layouts([row], spec, tok)[0]
    text = describe(lay.ids, lay.slots, spec.table, tok)
    head, _, tail = text.partition("summary:")
    assert "graph tokens" not in head and tail.startswith("<")
    if variant == "hop_diffused":
        assert tail == f"<{HPARAMS['num_query_tokens']} graph tokens: queries>"
    else:
        images = len(row["image_paths"])
        assert tail == "".join(f"<2 graph tokens: image {j}>" for j in range(images))
    for caption in row["image_captions"]:  # captions stay with their sections' text
        assert caption in head


def _config(variant: str, hop_phrases: bool) -> ExperimentConfig:
    return ExperimentConfig.from_dict(
        {"model": {"variant": variant, "hop_phrases": hop_phrases, "token_placement": "at_images"},
         "data": {"max_input_tokens": 10_000}}
    )  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS)
def test_hop_phrases_open_each_neighbour_only_where_structure_is_on(rows, tok, variant):
    row = max(rows, key=lambda r: len(set(r["text_hops"])))
    assert {1, 2} <= set(row["text_hops"])  # neighbours at two distances
    groups = tuple(adapter_for(variant, "raw", "at_images").token_groups)
    spec = LayoutSpec.from_config(_config(variant, True), groups)
    text = describe(*_ids_slots(build_layouts([row], spec, tok)[0]), spec.table, tok)
    plain = LayoutSpec.from_config(_config(variant, False), groups)
    plain_text = describe(*_ids_slots(build_layouts([row], plain, tok)[0]), plain.table, tok)
    assert "hop neighbours" not in plain_text
    if variant not in GRAPH4MM_VARIANTS:  # the structure-free baselines read as MMGL does
        assert not spec.hop_phrases and text == plain_text
        return
    assert spec.hop_phrases
    for i in reading_order(row)[1:]:  # every neighbour right after its own hop's phrase
        phrase = HOP_PHRASE.format(hop=row["text_hops"][i]).strip()
        assert f"{phrase} {row['text_segments'][i]}" in text
    assert text.count("hop neighbours:") == len(row["text_segments"]) - 1  # not the target
    assert row["target_text"] not in text


def test_hop_phrases_need_the_raw_layout():
    with pytest.raises(ConfigError, match=r"model.hop_phrases .*model.context = raw"):
        ExperimentConfig.from_dict(
            {"model": {"hop_phrases": True, "context": "pooled", "token_placement": "after_text"}}
        )


def _ids_slots(lay) -> tuple[list[int], list[int]]:
    return lay.ids, lay.slots


def test_the_budget_cuts_the_far_end_first_and_keeps_the_targets_text(rows, tok):
    row = max(rows, key=lambda r: len(r["text_segments"]))
    adapter = adapter_for("hop_diffused", "raw", "at_images", k=2)
    full = build_layouts([row], spec_for(adapter), tok)[0]
    cue = tok(", summary:", add_special_tokens=False)["input_ids"]
    own_run = spec_for(adapter).table.run(0, row["image_owner"].index(0))  # its own image
    end = full.slots.index(own_run[-1]) + 1  # the target's block: its text, caption, slots
    # room for the target's block and the cue only: exactly those, nothing of the rest
    spec = spec_for(adapter, budget=end + len(cue) + 2)
    lay = build_layouts([row], spec, tok)[0]
    assert lay.truncated and lay.ids == full.ids[:end] + cue
    assert lay.slots[:end] == full.slots[:end]
    # less room than that: the target's text is cut at its end, its image keeps its slots
    spec = spec_for(adapter, budget=end + len(cue) - 4)
    lay = build_layouts([row], spec, tok)[0]
    assert lay.truncated and len(lay.ids) == end + len(cue) - 4
    kept = lay.slots.index(own_run[0]) - len(
        tok(" " + row["image_captions"][0], add_special_tokens=False)["input_ids"]
    )
    assert lay.ids[:kept] == full.ids[:kept] and list(own_run) == [
        s for s in lay.slots if s >= 0
    ]  # fmt: skip
    # every budget is kept, and every input still ends with its cue
    for budget in (len(full.ids) - 3, 30, 10):
        lay = build_layouts([row], spec_for(adapter, budget=budget), tok)[0]
        assert lay.truncated and len(lay.ids) <= budget and lay.ids[-len(cue) :] == cue


def test_layout_text_renders_the_hint_where_the_graph_tokens_go(rows):
    row = rows[2]
    spec = LayoutSpec("raw", "after_text", 10**9, 12, 5, (TokenGroup("queries", None, 1),))
    text = layout_text(row, spec, lambda _: " HINT")
    assert text.startswith("summarize: ") and text.endswith(", summary: HINT")
    spec = LayoutSpec("raw", "at_images", 10**9, 12, 5, (TokenGroup("image", "image", 1),))
    text = layout_text(row, spec, lambda j: f" <img{j}>")
    for j, caption in enumerate(row["image_captions"]):
        assert f"{caption} <img{j}>" in text


def _model(backbones, variant, context, placement, lm_name="opt"):
    opt, llama, vision, processor = backbones
    lm = copy.deepcopy(opt if lm_name == "opt" else llama)
    torch.manual_seed(0)
    adapter = adapter_for(variant, context, placement, (lm, vision), k=2)
    return Graph4MM(lm, adapter, copy.deepcopy(vision), None, processor, variant=variant).eval()


def _collator(model, tok, rows, context, placement, budget=160):
    tdim, idim = text_feature_dim(model.lm), image_feature_dim(model.vision)
    text_feats, image_feats = features(rows, tdim, idim)
    spec = LayoutSpec(context, placement, budget, 12, 5, tuple(model.adapter.token_groups))
    return GraphCollator(tok, text_feats, image_feats, tdim, idim, spec, 12)


@pytest.mark.parametrize(
    ("variant", "placement", "lm_name"),
    [("hop_diffused", "at_images", "opt"), ("mmgl_gnn", "at_images", "llama"),
     ("hop_aware", "after_text", "opt"), ("text_only", "at_images", "opt")],
)  # fmt: skip
def test_generation_and_loss_under_the_raw_layout_equal_each_row_alone(
    rows, backbones, tok, variant, placement, lm_name
):
    model = _model(backbones, variant, "raw", placement, lm_name)
    collator = _collator(model, tok, rows, "raw", placement)
    batch = collator(rows[:4])
    assert batch.prompt_mask.sum(1).unique().numel() > 1  # rows of different lengths
    with torch.no_grad():
        out = model(batch)
        together = model.generate(batch, max_new_tokens=6)
        for i, row in enumerate(rows[:4]):
            alone = collator([row])
            single = model(alone)
            t = int(alone.target_mask.sum())
            torch.testing.assert_close(out.logits[i, :t], single.logits[0, :t], atol=1e-4, rtol=0)
            tokens = model.generate(alone, max_new_tokens=6)[0]
            assert together[i, : tokens.numel()].tolist() == tokens.tolist()


def _reference_pooled_logits(model, inputs, prompt_ids, prompt_mask):
    """The pooled model as it was: ``[prompt ; adapter tokens (absent ones masked)]``, the
    prefix's padding moved to the front, then the target; the LM called on the masked
    layout; logits at the target positions."""
    embed = model.lm.get_input_embeddings()
    tokens, token_mask = model.adapter(inputs)
    prefix = torch.cat([embed(prompt_ids), tokens], dim=1)
    real = torch.cat([prompt_mask, token_mask], dim=1).bool()
    length = real.shape[1]
    cols = torch.arange(length)
    order = torch.where(real, cols, cols - length).argsort(1)
    prefix = prefix.gather(1, order[..., None].expand(-1, -1, prefix.shape[-1]))
    real = real.gather(1, order)
    embeds = torch.cat([prefix, embed(inputs.target_ids)], dim=1)
    mask = torch.cat([real, inputs.target_mask.bool()], dim=1).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    t = inputs.target_ids.shape[1]
    out = model.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                   logits_to_keep=t + 1)  # fmt: skip
    return out.logits[:, :-1]


@pytest.mark.parametrize("variant", ["hop_diffused", "mmgl_concat", "mmgl_gnn", "text_only"])
def test_pooled_layout_is_the_model_it_replaces(rows, backbones, tok, variant):
    model = _model(backbones, variant, "pooled", "after_text")
    collator = _collator(model, tok, rows, "pooled", "after_text")
    batch = collator(rows[:4])
    plain = build_layouts(rows[:4], LayoutSpec("pooled", "after_text", 160, 12, 5, ()), tok)
    width = max(len(lay.ids) for lay in plain)
    ids = torch.full((4, width), tok.pad_token_id)
    mask = torch.zeros((4, width), dtype=torch.bool)
    for i, lay in enumerate(plain):
        ids[i, width - len(lay.ids) :] = torch.tensor(lay.ids)
        mask[i, width - len(lay.ids) :] = True
    with torch.no_grad():
        ours = model(batch).logits
        reference = _reference_pooled_logits(model, batch, ids, mask)
    real = batch.target_mask
    torch.testing.assert_close(ours[real], reference[real], atol=1e-4, rtol=1e-4)
