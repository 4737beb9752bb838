"""The packed LM pass runs causal SDPA without a mask: no host check for packed rows, and no
dense (B, 1, L, L) mask when transformers cannot check (torch.compile tracing, CUDA graph
recording), where it would otherwise build one."""

from __future__ import annotations

import pytest
import torch
import transformers
from test_model import batch_for, make_model

from g4mm.model.causal_attention import CAUSAL_SDPA, causal_attention

#: transformers 4.x's OPT builds its own causal mask rather than asking transformers' mask
#: builder, so the mask-free path does not apply to it there (pyproject allows >= 4.56; the
#: results are the same, test_model checks them on whichever version is installed).
MASK_FREE = {"llama": True, "opt": int(transformers.__version__.split(".")[0]) >= 5}


def _attention_modules(lm: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for name, m in lm.named_modules() if name.endswith("self_attn")]


@pytest.mark.parametrize("lm_name", ["opt", "llama"])
def test_packed_forward_attends_causally_without_a_mask(tiny_backbones, tokenizer, lm_name):
    model = make_model(tiny_backbones, lm_name=lm_name).train()
    seen = []

    def record(module, args, kwargs):
        seen.append((module.config._attn_implementation, kwargs.get("attention_mask")))

    attention = _attention_modules(model.lm)
    assert attention and model.lm.config._attn_implementation == "sdpa"
    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in attention]
    model(batch_for(model, tokenizer)).loss.backward()
    for hook in hooks:
        hook.remove()
    assert len(seen) == len(attention)
    assert all(impl == CAUSAL_SDPA for impl, _ in seen), seen
    assert all((mask is None) == MASK_FREE[lm_name] for _, mask in seen), seen
    assert model.lm.config._attn_implementation == "sdpa"  # restored after the call


def _lm_sdpa_calls(fn, *args) -> list[torch.fx.Node]:
    """The LM's SDPA calls (not the adapter's) in the graphs torch.compile traces from
    ``fn(*args)``."""
    graphs: list[torch.fx.GraphModule] = []

    def keep(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    try:
        torch.compile(fn, backend=keep)(*args)
    finally:
        torch._dynamo.reset()
    return [
        node
        for gm in graphs
        for node in gm.graph.nodes
        if node.op == "call_function"
        and "scaled_dot_product_attention" in str(node.target)
        and any(".lm." in path for path, _ in node.meta.get("nn_module_stack", {}).values())
    ]


@pytest.mark.parametrize("lm_name", ["opt", "llama"])
def test_traced_packed_pass_builds_no_dense_mask(tiny_backbones, tokenizer, lm_name):
    """Under :func:`causal_attention` every SDPA call of the LM is ``is_causal`` with no mask.

    The control: under tracing transformers cannot run its host check for packed rows and
    materialises a mask for the plain ``sdpa`` implementation, here LLaMA's (OPT's body in
    transformers 5.24 builds no mask without one; 5.17's did, the H100 run in bench/RESULTS.md)."""
    model = make_model(tiny_backbones, lm_name=lm_name).eval()
    inputs = batch_for(model, tokenizer)
    with torch.no_grad():
        ours = _lm_sdpa_calls(model, inputs)
        plain = _lm_sdpa_calls(model._teacher_forced, inputs)  # forward without the switch
    layers = model.lm.config.num_hidden_layers
    assert len(ours) == len(plain) == layers
    if MASK_FREE[lm_name]:
        assert all(n.kwargs.get("attn_mask") is None and n.kwargs.get("is_causal") for n in ours)
    if lm_name == "llama":
        assert all(n.kwargs.get("attn_mask") is not None for n in plain)


def test_causal_attention_restores_the_config_and_leaves_other_implementations(tiny_backbones):
    opt, llama, *_ = tiny_backbones
    with pytest.raises(RuntimeError, match="inside"), causal_attention(opt):
        assert opt.config._attn_implementation == CAUSAL_SDPA
        raise RuntimeError("inside")
    assert opt.config._attn_implementation == "sdpa"
    eager = type(llama)(llama.config.__class__.from_dict(llama.config.to_dict()))
    eager.config._attn_implementation = "eager"
    with causal_attention(eager):
        assert eager.config._attn_implementation == "eager"


def test_causal_sdpa_is_causal_without_a_mask_and_uses_a_given_one(tiny_backbones):
    opt, *_ = tiny_backbones
    causal_sdpa_forward = transformers.AttentionInterface()[CAUSAL_SDPA]  # what the LM calls
    module = _attention_modules(opt)[0]
    q, k, v = torch.randn(3, 2, 2, 5, 16).unbind(0)
    out, _ = causal_sdpa_forward(module, q, k, v, None)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, ref.transpose(1, 2))
    # an LM that builds its own mask (OPT in transformers 4.56): that mask is applied
    keep = torch.tensor([True, True, False, True, True])
    mask = torch.ones(5, 5, dtype=torch.bool).tril() & keep
    out, _ = causal_sdpa_forward(module, q, k, v, mask[None, None].expand(2, 1, 5, 5))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref.transpose(1, 2))
