"""Graph4MM over real (tiny, randomly initialised) HF model classes: OPT, LLaMA, CLIP ViT."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_inputs, with_soft_tokens

from g4mm.model import (
    VARIANTS,
    BackboneNotFoundError,
    Graph4MM,
    Graph4MMInputs,
    MMQFormer,
    build_adapter,
    load_lm,
    load_vision,
    mean_pooled_text_features,
    pooled_image_features,
    resolve_backbone,
)
from g4mm.model.encoders import image_feature_dim, text_feature_dim
from g4mm.model.graph4mm import adapter_token_groups
from g4mm.model.tiny import save_tiny_backbones

HPARAMS = dict(
    hidden_dim=16, num_heads=2, alpha=0.2, num_hops=2, max_hop=4, num_query_tokens=4,
    qformer_layers=2, ffn_mult=2, dropout=0.0, diffusion_impl="dense", gnn_type="gcn",
    gnn_layers=2,
)  # fmt: skip


def make_model(backbones, variant="hop_diffused", lm_name="opt", seed=0, **overrides):
    opt, llama, vision, processor = backbones
    lm = copy.deepcopy(opt if lm_name == "opt" else llama)
    torch.manual_seed(seed)
    adapter = build_adapter(
        variant,
        text_dim=text_feature_dim(lm),
        image_dim=image_feature_dim(vision),
        lm_dim=lm.get_input_embeddings().embedding_dim,
        **{**HPARAMS, **overrides},
    )
    return Graph4MM(lm, adapter, copy.deepcopy(vision), None, processor, variant=variant)


def batch_for(model, tokenizer, b=4, seed=0, **kw) -> Graph4MMInputs:
    """A random batch with a slot for each of the adapter's real soft tokens."""
    inputs = random_inputs(
        b,
        text_dim=text_feature_dim(model.lm),
        image_dim=image_feature_dim(model.vision),
        vocab=len(tokenizer),
        pad_id=tokenizer.pad_token_id,
        seed=seed,
        **kw,
    )
    return with_soft_tokens(inputs, model.bare_adapter, tokenizer.pad_token_id)


def select(inputs: Graph4MMInputs, rows) -> Graph4MMInputs:
    return inputs.map_tensors(lambda t: t[rows])


@pytest.mark.parametrize("lm_name", ["opt", "llama"])
@pytest.mark.parametrize("context", ["raw", "pooled"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs_forward_and_backward(
    tiny_backbones, tokenizer, variant, context, lm_name
):
    placement = {"raw": "at_images", "pooled": "after_text"}[context]
    model = make_model(
        tiny_backbones, variant, lm_name, context=context, token_placement=placement
    ).train()
    inputs = batch_for(model, tokenizer)
    out = model(inputs)
    assert out.logits.shape == (4, inputs.target_ids.shape[1], len(tokenizer))
    assert torch.isfinite(out.loss)
    if variant == "text_only" and context == "raw":  # the raw text alone: nothing to train
        assert not list(model.adapter.parameters()) and not out.loss.requires_grad
        assert (inputs.slot_index < 0).all()
        return
    assert (inputs.slot_index >= 0).any()  # soft tokens reach the LM
    out.loss.backward()
    grads = [p.grad for p in model.adapter.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.lm.parameters())
    assert all(p.grad is None for p in model.vision.parameters())


def test_frozen_modules_stay_in_eval_mode_and_out_of_optimizer(tiny_backbones):
    model = make_model(tiny_backbones).train()
    assert model.adapter.training
    assert not model.lm.training and not model.vision.training
    assert not any(m.training for m in model.lm.modules())
    groups = model.parameter_groups(weight_decay=0.01)
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.adapter.parameters()}
    frozen = {id(p) for m in model.frozen_modules() for p in m.parameters()}
    assert not in_optimizer & frozen
    assert all(p.ndim < 2 for p in groups[1]["params"])


def test_frozen_weights_unchanged_after_optimizer_steps(tiny_backbones, tokenizer):
    model = make_model(tiny_backbones).train()
    frozen_before = copy.deepcopy(
        {k: v for k, v in model.state_dict().items() if "adapter" not in k}
    )
    adapter_before = model.adapter_state_dict()
    optimizer = torch.optim.AdamW(model.parameter_groups(0.01), lr=1e-2)
    for step in range(3):
        optimizer.zero_grad()
        model(batch_for(model, tokenizer, seed=step)).loss.backward()
        optimizer.step()
    after = model.state_dict()
    for key, value in frozen_before.items():
        assert torch.equal(after[key], value), key
    changed = [
        k for k, v in model.adapter_state_dict().items() if not torch.equal(v, adapter_before[k])
    ]
    assert changed


def test_adapter_checkpoint_excludes_frozen_weights_and_round_trips(tiny_backbones, tokenizer):
    model = make_model(tiny_backbones)
    state = model.adapter_state_dict()
    n_adapter = sum(v.numel() for v in state.values())
    assert n_adapter == sum(p.numel() for p in model.adapter.parameters())
    lm_keys = set(model.lm.state_dict())
    assert not lm_keys & set(state)
    other = make_model(tiny_backbones, seed=123)
    other.load_adapter_state_dict(state)
    inputs = batch_for(model, tokenizer)
    torch.testing.assert_close(other(inputs).logits, model.eval()(inputs).logits)


def test_adapter_checkpoint_from_another_config_is_rejected(tiny_backbones):
    state = make_model(tiny_backbones, tokens_per_image=4).adapter_state_dict()
    with pytest.raises(ValueError, match="shape mismatches.*queries"):
        make_model(tiny_backbones, tokens_per_image=2).load_adapter_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        make_model(tiny_backbones, variant="mmgl_gnn").load_adapter_state_dict(state)


def real_rows(model: Graph4MM, inputs: Graph4MMInputs, with_targets: bool):
    """Each row's real token embeddings alone, (1, n_i, D), and its prefix length: the
    reference layout, independent of how the batch pads or orders its columns."""
    tokens, _ = model.adapter(inputs)
    embed = model.lm.get_input_embeddings()
    for row in range(inputs.prompt_ids.shape[0]):
        real = inputs.prompt_mask[row]
        ids, slots = inputs.prompt_ids[row, real].tolist(), inputs.slot_index[row, real].tolist()
        prefix = torch.stack([  # one column at a time: a token's embedding or its soft token
            tokens[row, slot] if slot >= 0 else embed.weight[token]
            for token, slot in zip(ids, slots, strict=True)
        ])  # fmt: skip
        parts = [prefix]
        if with_targets:
            parts.append(embed(inputs.target_ids[row, inputs.target_mask[row]]))
        yield torch.cat(parts)[None], prefix.shape[0]


def reference_loss(model: Graph4MM, inputs: Graph4MMInputs):
    """Mean CE over every real target, each row run alone through the LM's own forward."""
    losses = []
    for (row, n_prefix), targets in zip(
        real_rows(model, inputs, with_targets=True),
        (t[m] for t, m in zip(inputs.target_ids, inputs.target_mask, strict=True)),
        strict=True,
    ):
        logits = model.lm(inputs_embeds=row).logits[0, n_prefix - 1 : -1]  # predict targets
        losses.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
    return torch.cat(losses).mean()


@pytest.mark.parametrize("lm_name", ["opt", "llama"])
@pytest.mark.parametrize("variant", ["hop_diffused", "mmgl_concat", "text_only"])
def test_loss_counts_target_tokens_only(tiny_backbones, tokenizer, lm_name, variant):
    """The loss equals each row run alone (the baselines' absent nodes give padding soft
    tokens inside the prefix), through the packed pass and through the masked one."""
    model = make_model(tiny_backbones, variant, lm_name).eval()
    inputs = batch_for(model, tokenizer)
    with torch.no_grad():
        loss = model(inputs).loss
        torch.testing.assert_close(loss, reference_loss(model, inputs), atol=1e-5, rtol=1e-5)
        masked = model._masked_target_logits(inputs)
        real = inputs.target_mask
        masked_loss = torch.nn.functional.cross_entropy(masked[real], inputs.target_ids[real])
        torch.testing.assert_close(masked_loss, loss, atol=1e-5, rtol=1e-5)

        # prompt pads and target pads do not matter
        noisy = copy.deepcopy(inputs)
        noisy.prompt_ids[~noisy.prompt_mask] = 7
        noisy.target_ids[~noisy.target_mask] = 9
        torch.testing.assert_close(model(noisy).loss, loss)


def tiny_lm(kind: str, tokenizer):
    """A randomly initialised LM whose logits are not ``head(body(x))`` with plain causal
    attention: Granite divides its logits by ``logits_scaling``; Mistral attends within a
    sliding window."""
    import transformers

    common = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    if kind == "granite":
        config = transformers.GraniteConfig(logits_scaling=8.0, **common)
        return transformers.GraniteForCausalLM(config)
    config = transformers.MistralConfig(sliding_window=4, **common)
    return transformers.MistralForCausalLM(config)


@pytest.mark.parametrize("kind", ["granite", "mistral"])
def test_lms_with_their_own_head_or_window_train_on_their_own_logits(tokenizer, kind):
    torch.manual_seed(0)
    lm = tiny_lm(kind, tokenizer).eval()
    adapter = build_adapter("hop_diffused", text_feature_dim(lm), 16, 32, **HPARAMS)
    model = Graph4MM(lm, adapter, None).eval()
    assert not model._packed_pass_is_exact()
    inputs = random_inputs(4, text_feature_dim(lm), 16, len(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(
            model(inputs).loss, reference_loss(model, inputs), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("lm_name", ["opt", "llama"])
def test_samples_are_independent_of_batch_padding(tiny_backbones, tokenizer, lm_name):
    """A sample's logits are the same alone and inside a padded batch (left-padded prompt)."""
    model = make_model(tiny_backbones, lm_name=lm_name).eval()
    inputs = batch_for(model, tokenizer, b=4)
    full = model(inputs).logits
    for row in range(1, 4):
        alone = select(inputs, [row])
        # strip the shared left padding of the prompt for the lone sample
        keep = alone.prompt_mask[0]
        alone.prompt_ids, alone.prompt_mask = alone.prompt_ids[:, keep], alone.prompt_mask[:, keep]
        alone.slot_index = alone.slot_index[:, keep]
        real = inputs.target_mask[row]
        torch.testing.assert_close(
            model(alone).logits[0, real], full[row, real], atol=1e-4, rtol=1e-4
        )


def reference_greedy(model: Graph4MM, inputs: Graph4MMInputs, max_new_tokens: int):
    """Greedy decoding of each row alone (its real tokens only), a full forward pass per
    token and no cache."""
    embed = model.lm.get_input_embeddings()
    eos, pad = model.lm.generation_config.eos_token_id, model.lm.generation_config.pad_token_id
    rows = []
    for row, _ in real_rows(model, inputs, with_targets=False):
        tokens = []
        for _ in range(max_new_tokens):
            token = model.lm(inputs_embeds=row, use_cache=False).logits[0, -1].argmax()
            tokens.append(int(token))
            if token == eos:
                break
            row = torch.cat([row, embed(token)[None, None]], dim=1)
        rows.append(tokens)
    width = max(len(t) for t in rows)
    return torch.tensor([t + [pad] * (width - len(t)) for t in rows])


@pytest.mark.parametrize("lm_name", ["opt", "llama"])
@pytest.mark.parametrize("variant", ["hop_diffused", "mmgl_concat", "text_only"])
def test_cached_generation_equals_uncached_greedy(tiny_backbones, tokenizer, lm_name, variant):
    """Batched, cached generation of left-padded rows (the baselines' absent nodes give
    padding soft tokens too) equals each row decoded alone."""
    model = make_model(tiny_backbones, variant, lm_name).train()  # generate() goes to eval
    inputs = batch_for(model, tokenizer, b=4)
    cached = model.generate(inputs, max_new_tokens=8)
    assert model.adapter.training  # and back
    with torch.no_grad():
        reference = reference_greedy(model.eval(), inputs, 8)
    assert torch.equal(cached, reference)
    beams = model.generate(inputs, max_new_tokens=6, num_beams=2)
    assert beams.shape[0] == 4 and beams.shape[1] <= 6


def test_sparse_and_dense_diffusion_give_the_same_model(tiny_backbones, tokenizer):
    dense = make_model(tiny_backbones, diffusion_impl="dense").eval()
    sparse = make_model(tiny_backbones, diffusion_impl="sparse").eval()
    sparse.load_adapter_state_dict(dense.adapter_state_dict())
    inputs = batch_for(dense, tokenizer)
    torch.testing.assert_close(sparse(inputs).logits, dense(inputs).logits, atol=1e-5, rtol=1e-5)


def test_structure_variants_use_the_graph_and_ablations_ignore_it(tiny_backbones, tokenizer):
    """Rewiring a modality's edges changes the output iff that modality has a structure prior."""
    inputs = batch_for(make_model(tiny_backbones), tokenizer)
    rewired_text, rewired_image = copy.deepcopy(inputs), copy.deepcopy(inputs)
    for rewired, graph in ((rewired_text, "text"), (rewired_image, "image")):
        g = getattr(rewired, graph)
        full = g.mask[:, :, None] & g.mask[:, None, :] & ~torch.eye(g.mask.shape[1], dtype=bool)
        g.adj = full & ~g.adj
    expect = {
        "hop_diffused": (True, True),
        "no_text_structure": (False, True),
        "no_image_structure": (True, False),
        "mmgl_concat": (False, False),
    }
    for variant, (text_matters, image_matters) in expect.items():
        model = make_model(tiny_backbones, variant).eval()
        base = model(inputs).logits
        for rewired, matters in ((rewired_text, text_matters), (rewired_image, image_matters)):
            differs = not torch.allclose(model(rewired).logits, base, atol=1e-6)
            assert differs == matters, (variant, matters)


@pytest.mark.parametrize("context", ["raw", "pooled"])
def test_text_only_never_sees_images(tiny_backbones, tokenizer, context):
    placement = {"raw": "at_images", "pooled": "after_text"}[context]
    for variant, sees in (("text_only", False), ("hop_diffused", True)):
        model = make_model(
            tiny_backbones, variant, context=context, token_placement=placement
        ).eval()
        inputs = batch_for(model, tokenizer)
        other = copy.deepcopy(inputs)
        other.image.feats = torch.randn_like(other.image.feats) * 5
        assert torch.allclose(model(other).logits, model(inputs).logits) != sees, variant


def test_qformer_ignores_padding_nodes_and_survives_no_images():
    torch.manual_seed(0)
    qf = MMQFormer(dim=8, num_queries=3, num_layers=2, num_heads=2).eval()
    text, image = torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    text_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    image_mask = torch.tensor([[0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    out = qf(text, text_mask, image, image_mask)
    garbage_text, garbage_image = text.clone(), image.clone()
    garbage_text[~text_mask] = 1e3
    garbage_image[~image_mask] = 1e3
    torch.testing.assert_close(qf(garbage_text, text_mask, garbage_image, image_mask), out)
    assert torch.isfinite(out).all()


def test_frozen_feature_extractors(tiny_backbones, tokenizer):
    opt, _, vision, _ = tiny_backbones
    enc = tokenizer(
        ["a red circle", "a green triangle with stripes"], padding=True, return_tensors="pt"
    )
    feats = mean_pooled_text_features(opt, enc["input_ids"], enc["attention_mask"])
    assert feats.shape == (2, text_feature_dim(opt)) and not feats.requires_grad
    single = tokenizer(["a red circle"], return_tensors="pt")
    alone = mean_pooled_text_features(opt, single["input_ids"], single["attention_mask"])
    torch.testing.assert_close(alone[0], feats[0], atol=1e-5, rtol=1e-5)
    pixels = torch.randn(3, 3, 16, 16)
    img = pooled_image_features(vision, pixels)
    assert img.shape == (3, image_feature_dim(vision))


def test_registry_loads_saved_tiny_backbones_through_from_pretrained(tmp_path, tokenizer):
    from g4mm.config import ModelConfig

    dirs = save_tiny_backbones(tmp_path, ["a red circle", "a blue square"] * 20, image_size=16)
    assert resolve_backbone("tiny", "lm", tmp_path) == str(dirs["lm"])
    lm, tok = load_lm("tiny", tmp_path)
    vision, _processor = load_vision("tiny", tmp_path)
    assert type(lm).__name__ == "OPTForCausalLM" and type(vision).__name__ == "CLIPVisionModel"
    assert tok.pad_token is not None
    cfg = ModelConfig(variant="hop_aware", hidden_dim=16, num_heads=2, tokens_per_image=3)
    model = Graph4MM.from_config(cfg, artifact_dir=tmp_path)
    assert model.adapter.qformer.queries.shape == (3, 16)  # raw, at_images: 3 per image
    assert model.adapter.token_groups == adapter_token_groups(cfg)
    assert not any(p.requires_grad for p in model.lm.parameters())
    # a local directory works as a backbone name too
    assert load_lm(str(dirs["lm"]))[0].config.hidden_size == lm.config.hidden_size


def test_registry_errors_say_what_to_do(tmp_path):
    with pytest.raises(BackboneNotFoundError, match="unknown lm backbone 'gpt-17'"):
        resolve_backbone("gpt-17", "lm", tmp_path)
    with pytest.raises(BackboneNotFoundError, match="not built yet.*g4mm.model.tiny.*--corpus"):
        resolve_backbone("tiny", "vision", tmp_path)
    assert resolve_backbone("opt-125m", "lm") == "facebook/opt-125m"
    assert resolve_backbone("llama-1b", "lm").startswith("meta-llama/")
    with pytest.raises(BackboneNotFoundError, match="(?s)facebook/opt-125m.*hf download"):
        load_lm("opt-125m", tmp_path)  # offline and not cached here


def test_unknown_variant_is_rejected(tiny_backbones):
    with pytest.raises(ValueError, match="unknown model variant 'hop_difused'"):
        make_model(tiny_backbones, "hop_difused")
