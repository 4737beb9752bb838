"""Collation of sample rows into model batches, and building the tiny backbones."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import AutoTokenizer, OPTForCausalLM

from g4mm.data.collate import GraphCollator
from g4mm.data.corpus import _copy_batch, ensure_tiny_backbones
from g4mm.data.schema import SAMPLE_SCHEMA, feature_key
from g4mm.model import load_lm, load_vision
from g4mm.model.layout import LayoutSpec


def sample_row(prompt, target, texts, image_paths, text_edges=(), image_edges=()):
    return {
        "sample_id": f"s#{prompt}", "split": "train", "prompt": prompt, "target_text": target,
        "label": None, "zero_shot": False,
        "text_nodes": list(texts), "text_hops": list(range(len(texts))),
        "text_edge_src": [s for s, _ in text_edges], "text_edge_dst": [d for _, d in text_edges],
        "image_paths": list(image_paths), "image_hops": [1] * len(image_paths),
        "image_edge_src": [s for s, _ in image_edges],
        "image_edge_dst": [d for _, d in image_edges],
    }  # fmt: skip


@pytest.fixture
def collator(tokenizer):
    rng = np.random.default_rng(0)
    texts = ["red circle", "blue square", "green star", "page about shapes"]
    images = ["/img/a.png", "/img/b.png"]
    text_feats = {feature_key("text", t): rng.normal(size=6).astype(np.float32) for t in texts}
    image_feats = {feature_key("image", p): rng.normal(size=4).astype(np.float32) for p in images}
    # the pooled layout without soft tokens: the LM input is the prompt alone (the layouts
    # and their slots are tested in test_input_layout.py)
    layout = LayoutSpec("pooled", "after_text", max_input_tokens=16, max_text_nodes=4,
                        max_image_nodes=3, groups=())  # fmt: skip
    return GraphCollator(
        tokenizer, text_feats, image_feats, text_dim=6, image_dim=4, layout=layout,
        max_target_tokens=6,
    )  # fmt: skip


def test_collate_builds_padded_inputs_with_features_and_edges(collator, tokenizer):
    rows = [
        sample_row("a long prompt about the red circle section", "the circle is red",
                   ["red circle", "blue square", "green star"], ["/img/a.png", "/img/b.png"],
                   text_edges=[(1, 0), (0, 1), (2, 1)], image_edges=[(0, 1)]),
        sample_row("short", "a star", ["green star"], []),
    ]  # fmt: skip
    pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)  # rows are valid samples
    inputs = collator(rows)
    # prompts: left padded, BOS first on the longest one
    assert inputs.prompt_mask[1, 0].item() is False and inputs.prompt_mask[1, -1].item() is True
    assert inputs.prompt_ids[0, 0].item() == tokenizer.bos_token_id
    # targets: EOS appended, right padded, truncated to 6 tokens
    for i, target in enumerate(["the circle is red", "a star"]):
        ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = ids[:6]
        assert inputs.target_ids[i, : len(ids)].tolist() == ids
        assert inputs.target_mask[i].sum().item() == len(ids)
    # features by key, masks, attention-convention adjacency (dst receives from src)
    torch.testing.assert_close(
        inputs.text.feats[0, 2],
        torch.from_numpy(collator.text_features[feature_key("text", "green star")]),
    )
    assert inputs.text.mask.tolist() == [[True, True, True, False], [True, False, False, False]]
    assert inputs.text.adj[0, 0, 1] and inputs.text.adj[0, 1, 0] and inputs.text.adj[0, 1, 2]
    assert not inputs.text.adj[0, 2, 1]
    assert inputs.image.adj[0, 1, 0] and not inputs.image.adj[0, 0, 1]
    assert inputs.image.mask[1].sum() == 0 and inputs.text.hops[0].tolist() == [0, 1, 2, 0]


def test_missing_features_are_masked_and_counted(collator):
    rows = [sample_row("p", "t", ["red circle", "never embedded"], ["/img/missing.png"],
                       text_edges=[(1, 0)])]  # fmt: skip
    inputs = collator(rows)
    assert inputs.text.mask[0].tolist() == [True, False, False, False]
    assert not inputs.text.adj.any()  # the edge touched a masked node
    assert collator.missing_features == {"text": 1, "image": 1}


@pytest.mark.parametrize(
    ("kind", "edges", "bad"),
    [
        ("text", [(0, 1), (-1, 0)], "(-1 -> 0)"),  # numpy would wrap -1 round to the last node
        ("text", [(1, 0), (0, 3)], "(0 -> 3)"),  # past the row's 3 nodes (yet under the cap 4)
        ("image", [(0, 1), (0, -2)], "(0 -> -2)"),
    ],
)
def test_edge_index_outside_the_row_names_sample_and_modality(collator, kind, edges, bad):
    texts, images = ["red circle", "blue square", "green star"], ["/img/a.png", "/img/b.png"]
    row = sample_row("corrupt", "t", texts, images, **{f"{kind}_edges": edges})
    with pytest.raises(ValueError, match=rf"'s#corrupt', {kind} edges: edge 1 .*{re.escape(bad)}"):
        collator([sample_row("fine", "t", texts[:1], []), row])


def test_edge_lists_of_different_lengths_name_sample_and_modality(collator):
    row = sample_row("p", "t", ["red circle", "blue square"], ["/img/a.png", "/img/b.png"])
    row["image_edge_src"], row["image_edge_dst"] = [0, 1], [1]
    with pytest.raises(ValueError, match="'s#p', image edges: image_edge_src has 2 entries"):
        collator([row])
    del row["sample_id"]  # a row without an id is named by its position in the batch
    with pytest.raises(ValueError, match=r"batch row 0 \(no sample_id\), image edges"):
        collator([row])


def test_nodes_over_the_cap_are_cut_counted_and_their_edges_dropped(collator):
    texts = ["red circle", "blue square", "green star", "page about shapes", "red circle"]
    images = ["/img/a.png", "/img/b.png", "/img/a.png", "/img/b.png"]
    rows = [
        sample_row("p", "t", texts, images, text_edges=[(1, 0), (4, 0), (0, 4), (2, 3)],
                   image_edges=[(0, 3), (1, 0)]),
        sample_row("q", "t", texts[:2], images[:1]),
    ]  # fmt: skip
    inputs = collator(rows)
    assert inputs.text.mask[0].all() and inputs.image.mask[0].all()  # caps 4 and 3 filled
    # only the edges among kept nodes (dst receives from src); none wrapped onto a kept node
    assert inputs.text.adj[0].nonzero().tolist() == [[0, 1], [3, 2]]
    assert inputs.image.adj[0].nonzero().tolist() == [[0, 1]]
    assert collator.truncated_nodes == {"text": 1, "image": 1}


def test_drain_counts_returns_the_counters_and_resets_them(collator):
    texts = ["red circle", "never embedded", "blue square", "green star", "page about shapes"]
    collator([sample_row("p", "t", texts, ["/img/a.png", "/img/missing.png"])])
    assert collator.drain_counts() == {
        "missing_features.image": 1,
        "missing_features.text": 1,
        "truncated_nodes.image": 0,
        "truncated_nodes.text": 1,
        "truncated_inputs": 0,
    }
    assert set(collator.drain_counts().values()) == {0}
    collator([sample_row("q", "t", texts[:1], [])])
    assert sum(collator.drain_counts().values()) == 0


def test_collate_accepts_ray_style_column_batches(collator):
    rows = [sample_row("p one", "t", ["red circle"], ["/img/a.png"]),
            sample_row("p two", "u", ["blue square"], [])]  # fmt: skip
    columns = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    a, b = collator(rows), collator(columns)
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.text.feats, b.text.feats)


def test_ensure_tiny_backbones_builds_pretrained_lm_once(tmp_path):
    corpus = ["the red circle sits above the blue square", "a green star with stripes"] * 50
    cfg = SimpleNamespace(
        data=SimpleNamespace(artifact_dir=str(tmp_path), seed=0, image_size=16),
        model=SimpleNamespace(lm="tiny", vision="tiny"),
    )
    assert ensure_tiny_backbones(cfg, corpus, pretrain_steps=30, vision_steps=40) == {
        "lm": "built", "vision": "built"
    }  # fmt: skip
    assert ensure_tiny_backbones(cfg, corpus) == {"lm": "cached", "vision": "cached"}
    lm, tok = load_lm("tiny", tmp_path)
    vision, _ = load_vision("tiny", tmp_path)
    assert vision.config.image_size == 16
    # pretraining made the corpus likely: loss well below uniform log(vocab)
    batch = tok(corpus[:2], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(~batch["attention_mask"].bool(), -100)
    with torch.no_grad():
        loss = lm(**batch, labels=labels).loss.item()
    assert loss < 0.5 * np.log(len(tok)), loss
    # a directory stamped by an older build recipe is rebuilt, not reused
    stamp = tmp_path / "backbones" / "tiny-lm" / "g4mm_build.json"
    stamp.write_text(json.dumps({"version": 1}))
    assert ensure_tiny_backbones(cfg, corpus, pretrain_steps=5)["lm"] == "built"


def test_tiny_backbones_of_two_recipes_are_kept_side_by_side_one_built_by_hand_is_kept(
    tmp_path, caplog
):
    """Two configs sharing one data.artifact_dir, one after the other (measured before: the
    README's cluster example rebuilt the default's tiny LM, and the default's next run rebuilt
    it back, 147 s instead of 11 s): each recipe's build is kept, switching back is a swap."""
    from g4mm.data.corpus import recipe_tag

    corpus = ["the red circle sits above the blue square", "a green star with stripes"] * 20
    cfg = SimpleNamespace(
        data=SimpleNamespace(artifact_dir=str(tmp_path), seed=0, image_size=16),
        model=SimpleNamespace(lm="tiny", vision="tiny"),
    )
    docs = {"lm": {"dataset": "synthetic-docs", "source": {"num_pages": (8,)}},
            "vision": {"seed": 0, "image_size": 16}}  # fmt: skip
    products = {**docs, "lm": {"dataset": "synthetic-products", "source": {"n": 5}}}
    steps = {"pretrain_steps": 2, "vision_steps": 2}
    lm_dir = tmp_path / "backbones" / "tiny-lm"
    built = ensure_tiny_backbones(cfg, corpus, recipes=docs, **steps)
    assert built == {"lm": "built", "vision": "built"}
    docs_weights = (lm_dir / "model.safetensors").read_bytes()
    assert ensure_tiny_backbones(cfg, corpus, recipes=docs) == {"lm": "cached", "vision": "cached"}
    with caplog.at_level(logging.WARNING, logger="g4mm.data.corpus"):
        rebuilt = ensure_tiny_backbones(cfg, corpus, recipes=products, **steps)
    assert rebuilt == {"lm": "built", "vision": "cached"}
    kept = f"tiny-lm@{recipe_tag(docs['lm'])}"
    assert (f"built from another recipe (dataset 'synthetic-docs' -> 'synthetic-products'; "
            f"source.n None -> 5; source.num_pages [8] -> None); building it, and keeping the "
            f"other as {kept}") in caplog.text  # fmt: skip
    assert json.loads((lm_dir / "g4mm_build.json").read_text())["recipe"]["dataset"] == (
        "synthetic-products")  # fmt: skip
    assert (tmp_path / "backbones" / kept / "config.json").is_file()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="g4mm.data.corpus"):  # back: no training
        assert ensure_tiny_backbones(cfg, corpus, recipes=docs)["lm"] == "restored"
    assert "restoring the build kept for it" in caplog.text
    assert (lm_dir / "model.safetensors").read_bytes() == docs_weights
    assert (tmp_path / "backbones" / f"tiny-lm@{recipe_tag(products['lm'])}").is_dir()
    assert ensure_tiny_backbones(cfg, corpus, recipes=products)["lm"] == "restored"

    # one built by hand (no recipe recorded) is used as it is
    stamp = json.loads((lm_dir / "g4mm_build.json").read_text())
    stamp["recipe"] = None
    (lm_dir / "g4mm_build.json").write_text(json.dumps(stamp))
    assert ensure_tiny_backbones(cfg, corpus, recipes=docs)["lm"] == "cached"


def test_copy_batch_puts_the_loss_on_the_answer_only():
    ids, labels, mask = _copy_batch([([1, 5, 6], [7, 2]), ([1, 9], [8, 8, 2])], pad_id=0)
    assert ids.tolist() == [[1, 5, 6, 7, 2], [1, 9, 8, 8, 2]]
    assert labels.tolist() == [[-100, -100, -100, 7, 2], [-100, -100, 8, 8, 2]]
    ids, labels, mask = _copy_batch([([1, 5], [2]), ([1], [3, 4, 2])], pad_id=0)
    assert ids.tolist() == [[1, 5, 2, 0], [1, 3, 4, 2]] and mask.tolist() == [[1, 1, 1, 0], [1] * 4]
    assert labels.tolist() == [[-100, -100, 2, -100], [-100, 3, 4, 2]]


def test_vision_pretraining_learns_attributes_that_generalise():
    """After brief pretraining, fresh renders' pooled features separate colour and count."""
    from g4mm.data.corpus import VISION_TASKS, pretrain_vision
    from g4mm.data.synthetic import random_render_attributes, render_image
    from g4mm.model.tiny import tiny_clip_vision

    torch.manual_seed(0)
    vision, processor = tiny_clip_vision(image_size=32)
    pretrain_vision(vision, processor, 32, steps=120, pool_size=512, batch_size=32)
    rng = np.random.default_rng(123)  # images never seen in pretraining
    attrs = [random_render_attributes(rng) for _ in range(300)]
    pixels = processor(images=[render_image(a, 32, rng) for a in attrs], return_tensors="pt")
    with torch.no_grad():
        feats = vision(pixel_values=pixels["pixel_values"]).pooler_output
    for task, floor in (("colour", 0.5), ("count", 0.6)):
        y = torch.tensor([VISION_TASKS[task].index(getattr(a, task)) for a in attrs])
        train, test = slice(0, 200), slice(200, 300)
        centroids = torch.stack([
            feats[train][y[train] == c].mean(0) for c in range(len(VISION_TASKS[task]))
        ])  # fmt: skip
        accuracy = (torch.cdist(feats[test], centroids).argmin(1) == y[test]).float().mean()
        chance = 1 / len(VISION_TASKS[task])
        assert accuracy > max(floor, 2 * chance), (task, accuracy.item())


def _rows_of_varied_length(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "circle", "square", "star", "shapes"]
    return [
        sample_row(f"{i} " + " ".join(rng.choice(words, size=int(rng.integers(1, 12)))),
                   "a red circle", ["red circle"], ["/img/a.png"])
        for i in range(n)
    ]  # fmt: skip


def _padding(batch) -> float:
    """Padded prompt tokens / real prompt tokens of one collated batch."""
    return batch.prompt_mask.numel() / int(batch.prompt_mask.sum())


def test_cycle_batches_bucketing_pads_less_and_uses_each_row_once_per_epoch(collator):
    from itertools import islice

    from g4mm.train.components import cycle_batches

    rows = _rows_of_varied_length(64)
    epoch = 64 // 4
    plain = list(islice(cycle_batches(rows, collator, 4, seed=0), epoch))
    bucketed = list(islice(cycle_batches(rows, collator, 4, seed=0, bucket_window=16), epoch))
    prompts = [collator.tokenizer.decode(ids[mask.bool()]) for b in bucketed
               for ids, mask in zip(b.prompt_ids, b.prompt_mask, strict=True)]  # fmt: skip
    assert len(prompts) == len(set(prompts)) == 64  # every row once in the first epoch
    mean = lambda batches: sum(map(_padding, batches)) / len(batches)  # noqa: E731
    assert mean(bucketed) < 1.1 < mean(plain)


def test_bucketed_chunk_batches_sort_each_ray_style_chunk(collator):
    from g4mm.train.components import bucketed_chunk_batches

    rows = _rows_of_varied_length(40, seed=1)
    chunks = [
        {k: np.array([r[k] for r in rows[s : s + 16]], dtype=object) for k in rows[0]}
        for s in range(0, 40, 16)
    ]  # Ray's numpy column batches: 16, 16, 8 rows
    batches = list(bucketed_chunk_batches(chunks, collator, 4, seed=0, window=4))
    assert len(batches) == 4 + 4 + 2 and all(b.batch_size == 4 for b in batches)
    assert sum(map(_padding, batches)) / len(batches) < 1.1


def test_collated_tokens_equal_the_tokenizers_own_padding(collator, tokenizer):
    """The collator pads the ids it encoded once exactly as the tokenizer pads: prompts on the
    left, targets (+ EOS, capped) on the right; passing the encodings back gives the same
    batch, and ``encode``'s lengths are the collated mask sums."""
    rows = _rows_of_varied_length(7, seed=3)
    rows[2]["target_text"] = "a red circle above a blue square with stripes and dots " * 3
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        prompts = tokenizer(
            [r["prompt"] for r in rows], padding=True, truncation=True,
            max_length=collator.layout.max_input_tokens, return_tensors="pt",
        )  # fmt: skip
    finally:
        tokenizer.padding_side = side
    batch = collator(rows)
    assert torch.equal(batch.prompt_ids, prompts["input_ids"])
    assert torch.equal(batch.prompt_mask, prompts["attention_mask"].bool())
    ids = [tokenizer(r["target_text"], add_special_tokens=False)["input_ids"] for r in rows]
    ids = [[*seq, tokenizer.eos_token_id][: collator.max_target_tokens] for seq in ids]
    width = max(map(len, ids))
    assert batch.target_ids.shape == (7, width) and width == collator.max_target_tokens
    for row, seq in enumerate(ids):
        assert batch.target_ids[row, : len(seq)].tolist() == seq
        assert batch.target_mask[row].tolist() == [True] * len(seq) + [False] * (width - len(seq))
        assert set(batch.target_ids[row, len(seq) :].tolist()) <= {tokenizer.pad_token_id}
    encoded = collator.encode(rows)
    again = collator(rows, encoded)
    assert torch.equal(again.prompt_ids, batch.prompt_ids)
    assert torch.equal(again.target_ids, batch.target_ids)
    real = (batch.prompt_mask.sum(1) + batch.target_mask.sum(1)).tolist()
    assert encoded.lengths() == collator.token_lengths(rows) == real
    picked = collator([rows[4], rows[1]], encoded.select([4, 1]))
    assert torch.equal(picked.target_ids, collator([rows[4], rows[1]]).target_ids)
    with pytest.raises(ValueError, match="2 prompts for 3 rows"):
        collator(rows[:3], encoded.select([0, 1]))


def test_the_tiny_lm_build_is_the_same_whatever_the_callers_threads():
    """Built with BUILD_THREADS threads whatever the process has: the same weights bit for bit
    (float reductions split by thread count; one such build copied with 1 thread and not
    with 2)."""
    from g4mm.data.corpus import build_tiny_lm

    corpus = ["the red circle sits above the blue square", "a green star with stripes"] * 30
    before = torch.get_num_threads()
    states = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            model, _, info = build_tiny_lm(corpus, steps=12, seed=0)
            assert torch.get_num_threads() == threads  # given back
            states.append(model.state_dict())
    finally:
        torch.set_num_threads(before)
    assert info["steps"] == 12 and info["held_out_copy_accuracy"] is None  # no copies, no gate
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_a_tiny_lm_that_does_not_copy_fails_loudly_and_the_fast_probe_is_greedy_decoding():
    from g4mm.data.corpus import (
        TinyLMBuildError,
        _copy_ids,
        _pack,
        build_tiny_lm,
        copied_exactly,
        copy_accuracy,
        pretrain_lm,
    )
    from g4mm.data.synthetic import lm_copy_documents
    from g4mm.model.tiny import tiny_opt, train_tokenizer

    corpus = ["the red circle sits above the blue square", "a green star with stripes"] * 30
    copies = lm_copy_documents("synthetic-products", 450, seed=0)
    with pytest.raises(TinyLMBuildError, match=r"copies 0\.\d\d of 50 held-out .* reach 0\.9"):
        build_tiny_lm(corpus, copies, steps=3, seed=0)
    # the stopping probe's one teacher-forced pass counts what greedy decoding gets right
    torch.manual_seed(0)
    tok = train_tokenizer(corpus + [" ".join(p) for p in copies])
    model = tiny_opt(tok, hidden_size=64, num_layers=2, num_heads=2, max_positions=256)
    pretrain_lm(model, _pack(tok, corpus), _copy_ids(tok, copies[:400]), steps=160, seed=0,
                pad_id=tok.pad_token_id, copy_rows=8, corpus_rows=2)  # fmt: skip
    greedy = copy_accuracy(model, tok, copies[400:])
    assert 0 < greedy < 1  # some copied, some not: the two can disagree
    assert copied_exactly(model, _copy_ids(tok, copies[400:]), tok.pad_token_id) == pytest.approx(
        greedy
    )


_BUILD_IN_A_PROCESS = """
import json, sys
from types import SimpleNamespace
from g4mm.data.corpus import ensure_tiny_backbones
root, dataset = sys.argv[1], sys.argv[2]
cfg = SimpleNamespace(data=SimpleNamespace(artifact_dir=root, seed=0, image_size=16),
                      model=SimpleNamespace(lm="tiny", vision="none"))
recipe = {"lm": {"dataset": dataset, "source": {}}}
corpus = ["the red circle sits above the blue square", "a green star with stripes"] * 20
print(json.dumps(ensure_tiny_backbones(cfg, corpus, pretrain_steps=3, recipes=recipe)))
"""


@pytest.mark.parametrize("datasets", [("docs", "docs", "docs"), ("docs", "products")],
                         ids=["same-recipe", "two-recipes"])  # fmt: skip
def test_runs_at_once_in_one_artifact_dir_never_tear_a_tiny_backbone(tmp_path, datasets):
    """Processes building the tiny LM at once in one data.artifact_dir (before: each renamed
    its build over the others', "Directory not empty" or a half-replaced directory): one
    build per recipe, each whole, the same recipe built once."""
    from g4mm.data.corpus import recipe_tag
    from g4mm.model.backbones import read_stamp

    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_IN_A_PROCESS, str(tmp_path), d],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for d in datasets]  # fmt: skip
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1])["lm"])
    backbones = tmp_path / "backbones"
    if len(set(datasets)) == 1:
        assert sorted(results) == ["built", "cached", "cached"]
        assert not list(backbones.glob("tiny-lm@*"))
    else:
        assert sorted(results) == ["built", "built"]
        active = read_stamp(backbones / "tiny-lm")["recipe"]["dataset"]
        other = next(d for d in datasets if d != active)
        aside = backbones / f"tiny-lm@{recipe_tag({'dataset': other, 'source': {}})}"
        assert read_stamp(aside)["recipe"]["dataset"] == other
    for directory in backbones.glob("tiny-lm*"):
        if directory.is_dir():
            AutoTokenizer.from_pretrained(directory)
            OPTForCausalLM.from_pretrained(directory)  # whole: loads
    assert not list(backbones.glob(".tiny-lm.build-*"))  # no leftovers
