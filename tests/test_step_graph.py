"""The whole-step CUDA-graph path (g4mm/train/step_graph.py) without CUDA: the same padded,
static-input step, run eagerly, must train exactly like the plain step. What only a GPU can
check (recording and replaying the graph) is bench/gpu/gpu_checks.py's "whole-step CUDA graph" row.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_model import HPARAMS, batch_for
from test_model import make_model as _make_model

from g4mm.config import ExperimentConfig, load_config
from g4mm.train.checkpoint import load_checkpoint, save_checkpoint
from g4mm.train.loop import train_loop
from g4mm.train.optim import build_optimizer, build_scheduler, store_lr
from g4mm.train.step_graph import GraphedTrainStep, graph_shape
from g4mm.train.transfer import copy_batch_, pinned

#: The models here put their 4 query tokens after every prompt: a batch of prompt_len P is
#: P + SLOTS columns wide.
SLOTS = HPARAMS["num_query_tokens"]


def make_model(*args, **kwargs):
    return _make_model(*args, context="pooled", token_placement="after_text", **kwargs)

CPU = torch.device("cpu")
#: ||w_graphed - w_plain|| / ||w_plain - w_0|| allowed. The fused and foreach AdamW kernels
#: alone end 2.1e-4 apart after 18 steps (float-level gradient differences, which AdamW's
#: division by sqrt(v) amplifies on near-zero gradients); the static-input path ends 3.2e-4
#: (grad_accum 1) and 1.5e-4 (grad_accum 3) from the plain loop. Breaking the
#: step graph on purpose (replays on stale inputs, a frozen lr, no zeroing, no 1/grad_accum)
#: failed the training test below each time (its loss check or this one).
RELATIVE_TOLERANCE = 3e-3


def assert_same_training(model, reference, backbones) -> None:
    """``model`` ended where ``reference`` did (both trained from ``make_model``'s init)."""
    initial = make_model(backbones).adapter.state_dict()
    ref = reference.adapter.state_dict()
    moved = torch.cat([(ref[k] - v).flatten() for k, v in initial.items()]).norm()
    apart = torch.cat([(ref[k] - v).flatten() for k, v in model.adapter.state_dict().items()])
    assert moved > 0.1 and apart.norm() / moved < RELATIVE_TOLERANCE, (apart.norm(), moved)


def adapter_grads(model, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(batch).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.adapter.parameters()]


def test_padding_to_a_graph_shape_changes_no_loss_or_gradient(tiny_backbones, tokenizer):
    for lm_name in ("opt", "llama"):
        model = make_model(tiny_backbones, lm_name=lm_name).train()
        batch = batch_for(model, tokenizer, b=3, seed=1)
        width = batch.prompt_ids.shape[1]
        padded = batch.padded_to(width + 9, batch.target_ids.shape[1] + 4)
        assert padded.prompt_ids.shape[1] == width + 9 and padded.target_ids.shape[1] == 9
        assert padded.slot_index.shape == padded.prompt_ids.shape
        assert (padded.slot_index[:, :9] == -1).all()  # padding is no slot
        assert padded.prompt_mask.sum() == batch.prompt_mask.sum()  # only padding added
        loss, grads = adapter_grads(model, batch)
        padded_loss, padded_grads = adapter_grads(model, padded)
        torch.testing.assert_close(padded_loss, loss, rtol=1e-5, atol=1e-6)
        for g, h in zip(grads, padded_grads, strict=True):
            torch.testing.assert_close(h, g, rtol=1e-4, atol=1e-6)


def test_graph_shapes_round_up_to_the_pad_multiple(tiny_backbones, tokenizer):
    model = make_model(tiny_backbones)
    batch = batch_for(model, tokenizer, b=2, prompt_len=9 - SLOTS, target_len=3)
    assert graph_shape(batch, 4) == (12, 4)
    assert graph_shape(batch, 1) == (9, 3)
    assert graph_shape(batch, 64) == (64, 64)


def shape_cycle(model, tokenizer, seed: int = 0):
    """Six batches in three padded shapes (pad 4): two batches of different content (and
    some of different raw width) per shape, so a replay on stale inputs would show."""
    widths = [(7, 5), (8, 3), (11, 6), (6, 5), (8, 4), (12, 8)]  # -> (8,8) (8,4) (12,8) x2
    return [
        batch_for(model, tokenizer, b=3, seed=seed + i, prompt_len=p - SLOTS, target_len=t)
        for i, (p, t) in enumerate(widths)
    ]


def step_graph_config(steps: int, graphed: bool) -> ExperimentConfig:
    cfg = ExperimentConfig()
    t = cfg.train
    t.max_steps, t.eval_every, t.warmup_steps, t.lr, t.grad_clip = steps, steps // 2, 4, 3e-3, 0.5
    t.step_graph, t.step_graph_pad = graphed, 4
    return cfg


def train(
    backbones, tokenizer, graphed: bool, steps: int = 18, resume=None, lm_name="opt",
    **cfg_changes,
):  # fmt: skip
    model = make_model(backbones, lm_name=lm_name).train()
    batches = shape_cycle(model, tokenizer)
    cfg = step_graph_config(steps, graphed)
    for key, value in cfg_changes.items():
        setattr(cfg.train, key, value)
    if resume is not None:
        model.load_adapter_state_dict(resume["adapter"])
    logs, states = [], []
    originals = [b.map_tensors(torch.clone) for b in batches]
    done = resume["step"] * cfg.train.grad_accum if resume else 0  # micro-batches used
    order = iter((batches * steps * cfg.train.grad_accum)[done:])
    history = train_loop(
        model=model, batches=order, cfg=cfg, device=CPU, resume=resume,
        report=lambda metrics, state: states.append(copy.deepcopy(state)), log=logs.append,
    )  # fmt: skip
    for batch, original in zip(batches, originals, strict=True):  # inputs are never written
        assert all(map(torch.equal, batch.tensors(), original.tensors()))
    return model, history, logs, states


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_static_input_step_trains_like_the_plain_step(tiny_backbones, tokenizer, grad_accum):
    """18 optimizer steps over three padded shapes, lr warming up then decaying, gradients
    clipped, with and without accumulation: every piece (a shape's micro-step, the update)
    runs two eager warm-up times, is "recorded" (static inputs) and replayed; losses, learning
    rates and the adapter weights match the plain loop."""
    plain, plain_history, _, _ = train(tiny_backbones, tokenizer, graphed=False,
                                       grad_accum=grad_accum)  # fmt: skip
    graphed, graphed_history, logs, _ = train(tiny_backbones, tokenizer, graphed=True,
                                              grad_accum=grad_accum)  # fmt: skip
    assert any("no CUDA" in line for line in logs)
    micro_runs, eager = 18 * grad_accum, 3 * 2 + 2  # three shapes and the update, twice each
    summary = [line for line in logs if line.startswith("step graph: 4 graphs recorded")]
    replays = f"{micro_runs + 18 - eager} replays, {eager} eager runs"
    assert summary and replays in summary[0], logs
    for ours, theirs in zip(graphed_history, plain_history, strict=True):
        assert abs(ours["train_loss"] - theirs["train_loss"]) < 1e-5 * abs(theirs["train_loss"])
        assert isinstance(ours["lr"], float)  # read off the lr tensor (fp32) for the report
        assert abs(ours["lr"] - theirs["lr"]) <= 1e-6 * theirs["lr"]
    assert_same_training(graphed, plain, tiny_backbones)


@pytest.mark.parametrize("lm_name", ["opt", "llama"])
def test_the_paper_configs_compiled_forward_step_graph_trains_like_the_plain_step(
    tiny_backbones, tokenizer, lm_name
):
    """What ``wikiweb2m-opt125m`` / ``-llama1b`` run on a GPU: ``compile_scope: forward`` with
    the step graph, over three padded shapes (the second makes dynamo compile for dynamic
    lengths): compiled once without falling back, every shape recorded and replayed, and
    training as the plain eager loop does, for both LM families of the packed pass."""
    paper = load_config("wikiweb2m-opt125m").train
    changes = {k: getattr(paper, k) for k in ("compile", "compile_scope", "compile_mode")}
    assert changes == {"compile": True, "compile_scope": "forward", "compile_mode": "default"}
    plain, plain_history, _, _ = train(tiny_backbones, tokenizer, False, 12, lm_name=lm_name)
    torch._dynamo.reset()
    try:
        ours, history, logs, _ = train(tiny_backbones, tokenizer, True, 12, lm_name=lm_name,
                                       **changes)  # fmt: skip
    finally:
        torch._dynamo.reset()
    assert any("forward compiled" in line for line in logs), logs
    assert not any("fall" in line.lower() or "failed" in line for line in logs), logs
    assert any(line.startswith("step graph: 4 graphs recorded") for line in logs), logs
    for a, b in zip(history, plain_history, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 * abs(b["train_loss"])
    ours.compile_parts(False)
    assert_same_training(ours, plain, tiny_backbones)


@pytest.mark.parametrize("resume_graphed", [False, True])
def test_a_step_graph_checkpoint_resumes(tiny_backbones, tokenizer, tmp_path, resume_graphed):
    """The optimizer state of a step-graph run (capturable, lr held in a tensor), through a
    checkpoint file, resumes a plain or a step-graph run, which ends where an uninterrupted
    plain run ends."""
    plain, _, _, _ = train(tiny_backbones, tokenizer, graphed=False, steps=12)
    _, _, _, states = train(tiny_backbones, tokenizer, graphed=True, steps=12)
    assert states[0]["step"] == 6
    assert isinstance(states[0]["optimizer"]["param_groups"][0]["lr"], torch.Tensor)
    halfway = load_checkpoint(save_checkpoint(tmp_path, states[0]))
    resumed, history, _, _ = train(tiny_backbones, tokenizer, graphed=resume_graphed, steps=12,
                                   resume=halfway)  # fmt: skip
    assert history[-1]["resumed_from_step"] == 6
    assert_same_training(resumed, plain, tiny_backbones)


def test_use_step_graph_follows_the_config_and_says_what_it_does():
    from g4mm.train.loop import use_step_graph

    logs: list[str] = []
    cfg = step_graph_config(4, graphed=True).train
    assert use_step_graph(cfg, CPU, data_parallel=True, log=logs.append)  # tests/test_grad_sync
    assert logs == [
        "step graph: data-parallel: gradients averaged by one all-reduce per step, outside DDP",
        "step graph: no CUDA on cpu; the same static-input steps run eagerly",
    ]
    cfg.step_graph = False
    assert not use_step_graph(cfg, CPU, data_parallel=False, log=logs.append)


def test_graphed_step_refuses_an_optimizer_that_cannot_be_recorded(tiny_backbones):
    model = make_model(tiny_backbones)
    cfg = ExperimentConfig().train
    optimizer = build_optimizer(model, cfg, CPU)
    build_scheduler(optimizer, cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    with pytest.raises(ValueError, match="capturable=True"):  # float lr, not capturable
        GraphedTrainStep(model, optimizer, params, autocast=torch.autocast)
    capturable = build_optimizer(model, cfg, CPU, capturable=True)
    store_lr(capturable, as_tensor=True)
    GraphedTrainStep(model, capturable, params, autocast=torch.autocast)


def test_batches_already_on_the_device_are_not_pinned(tiny_backbones, tokenizer):
    """Pinning is for host tensors: a batch handed to training already on its device (as
    bench/gpu/gpu_checks.py does on CUDA) goes through untouched rather than failing in
    ``pin_memory`` ("only dense CPU tensors can be pinned", the H100 run of 2026-11-27)."""
    model = make_model(tiny_backbones)
    on_device = batch_for(model, tokenizer).to("meta")
    assert all(pinned(t) is t for t in on_device.tensors())
    static = on_device.map_tensors(torch.empty_like)
    copy_batch_(static, on_device)  # device -> device: no pinning on the way


def test_compile_with_the_step_graph_traces_the_lm_once_at_the_padded_shape(
    tiny_backbones, tokenizer
):
    """The compile probe runs the batch at the shape the recorded steps will run (padded):
    probing at the raw width made dynamo trace a second length and compile the LM for every
    length (dynamic shapes) where one static shape was all the steps needed."""
    from torch._dynamo.utils import counters

    model = make_model(tiny_backbones).train()
    batches = [batch_for(model, tokenizer, b=3, seed=i, prompt_len=7 - SLOTS, target_len=5)
               for i in range(3)]  # fmt: skip
    assert graph_shape(batches[0], 4) == (8, 8) and batches[0].prompt_ids.shape[1] == 7
    cfg = step_graph_config(3, graphed=True)
    cfg.train.compile = True
    torch._dynamo.reset()
    counters.clear()
    try:
        train_loop(model=model, batches=iter(batches * 3), cfg=cfg, device=CPU,
                   report=lambda m, s: None, log=lambda _: None)  # fmt: skip
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        model.compile_parts(False)
        torch._dynamo.reset()


def test_resumed_step_counts_move_to_the_parameters_device():
    """load_state_dict places AdamW's step counts by the saved groups' flags: a checkpoint
    from a CPU run keeps them on the CPU; a capturable step on another device needs them
    there (the meta device stands in for a GPU here)."""
    param = torch.nn.Parameter(torch.zeros(3, device="meta"))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    optimizer.state[param] = {"step": torch.tensor(7.0), "exp_avg": torch.zeros(3, device="meta")}
    store_lr(optimizer, as_tensor=True)
    step = optimizer.state[param]["step"]
    assert step.device.type == "meta" and step.dtype == torch.float32
    assert optimizer.param_groups[0]["lr"].device.type == "meta"
