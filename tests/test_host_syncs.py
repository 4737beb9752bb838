"""The host-sync audit finds what would stall a GPU step, and the training step has none."""

from __future__ import annotations

import pytest
import torch
from test_model import batch_for, make_model

from g4mm.model.adapters import GRAPH4MM_VARIANTS
from g4mm.train.host_syncs import HostSyncAudit, audit_training_step


def _ops(audit: HostSyncAudit) -> list[str]:
    return sorted(sync.op.split(".")[1] for sync in audit.syncs.elements())


def test_audit_flags_scalar_reads_and_data_dependent_shapes():
    x = torch.randn(6, 3)
    mask = x[:, 0] > 0
    with HostSyncAudit() as audit:
        x.sum().item()
        bool(mask.any())
        x[mask]  # boolean indexing: the output length is the number of True rows
        x.nonzero()
        x.masked_select(x > 0)
        torch.repeat_interleave(torch.arange(3), torch.tensor([1, 2, 3]))
        y = x.clone()
        y[mask] = 0.0
    assert _ops(audit) == sorted(
        ["_local_scalar_dense"] * 2
        + ["index", "nonzero", "masked_select", "repeat_interleave", "index_put_"]
    )
    sync = next(iter(audit.syncs))
    assert sync.where.startswith("tests/test_host_syncs.py:") and sync.device == "cpu"
    assert audit.on("cpu") == audit.count == 7 and audit.on("cuda") == 0
    assert "index" in audit.report()


def test_audit_leaves_fixed_shape_ops_alone():
    x = torch.randn(6, 3, requires_grad=True)
    mask = x[:, 0] > 0
    with HostSyncAudit() as audit:
        y = torch.where(mask[:, None], x, 0.0) @ torch.randn(3, 3)
        y = y[torch.tensor([0, 2])]  # integer (not boolean) indexing
        y = y.cumsum(0).softmax(-1).masked_fill(~mask[:2, None], 0.0)
        torch.repeat_interleave(torch.arange(3), torch.tensor([1, 2, 3]), output_size=6)
        y.sum().backward()
    assert audit.count == 0, audit.report()
    assert audit.report() == "none"


#: Every adapter with something to train: the raw layout's (per-image tokens) and the pooled
#: one's (text_only under raw has no parameter; pooled mmgl_gnn's PyG GNNs index by mask).
TRAINED = [(v, "raw") for v in (*GRAPH4MM_VARIANTS, "mmgl_concat", "mmgl_gnn")] + [
    ("hop_diffused", "pooled"), ("mmgl_concat", "pooled"), ("text_only", "pooled"),
]  # fmt: skip


def layout_model(backbones, variant, context, **kw):
    placement = {"raw": "at_images", "pooled": "after_text"}[context]
    return make_model(backbones, variant, context=context, token_placement=placement, **kw)


@pytest.mark.parametrize(
    ("variant", "context", "lm_name"),
    [(v, c, "opt") for v, c in TRAINED] + [("hop_diffused", "raw", "llama")],
)
def test_training_step_has_no_host_syncs(tiny_backbones, tokenizer, variant, context, lm_name):
    """Forward, backward, clipping and fused AdamW as on CUDA: every shape is fixed by the
    batch's padded sizes, so the host never waits for the device inside a step. (LLaMA's body
    builds position ids itself and, given no attention mask, transformers would check on the
    host whether the rows are packed sequences, one sync per forward; the packed pass runs
    under :func:`g4mm.model.causal_attention.causal_attention`, where it does not.)"""
    model = layout_model(tiny_backbones, variant, context, lm_name=lm_name).train()
    audit = audit_training_step(model, batch_for(model, tokenizer), torch.device("cpu"))
    assert audit.count == 0, audit.report()
    assert all(p.grad is None for p in model.parameters())


def test_sparse_diffusion_syncs_only_for_the_edge_count(tiny_backbones, tokenizer):
    """The sparse path's one inherent sync per modality: the number of edges (``nonzero``)."""
    model = make_model(tiny_backbones, diffusion_impl="sparse").train()
    audit = audit_training_step(model, batch_for(model, tokenizer), torch.device("cpu"))
    assert _ops(audit) == ["nonzero", "nonzero"], audit.report()
    assert {sync.where.split(":")[0] for sync in audit.syncs} == {"g4mm/model/adapters.py"}


@pytest.mark.parametrize(("variant", "context"), TRAINED)
def test_training_step_creates_no_tensor_on_the_host(tiny_backbones, tokenizer, variant, context):
    """The step with the model and batch on the ``meta`` device: a tensor made inside the
    step without the batch's device (``torch.arange(n)``, ``torch.tensor([...])``) would meet
    meta tensors and fail here, as it fails (or copies from the host every step, which a CUDA
    graph cannot record) on a GPU, while CPU-only tests pass. Scalar reads fail on meta too."""
    model = layout_model(tiny_backbones, variant, context).train()
    batch = batch_for(model, tokenizer)
    model, batch = model.to("meta"), batch.to("meta")
    loss = model(batch).loss
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    assert loss.device.type == "meta" and all(p.grad.device.type == "meta" for p in params)
