"""The step graph under data parallelism: two gloo ranks, each with its own batches, train
with ``train.step_graph`` (the bare adapter, never wrapped in DDP, rank 0's weights broadcast
at the start, gradients averaged by :class:`g4mm.train.grad_sync.GradientAllReduce`) exactly
as with DDP's own hooks; a DDP-wrapped adapter with the step graph, or several ranks with
neither, are refused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from g4mm.train.components import collate_counter
from g4mm.train.grad_sync import GradientAllReduce, broadcast_module

WORLD = 2
STEPS = 8


def _rank_run(rank: int, init_file: str, out_dir: str) -> None:
    """One rank: the plain DDP loop, then the step-graph loop, from the same initial weights
    on this rank's batches (grad_accum 2); saves the adapters and logs."""
    from conftest import CORPUS, make_tiny_backbones
    from test_model import make_model
    from test_step_graph import shape_cycle, step_graph_config

    from g4mm.model.tiny import train_tokenizer
    from g4mm.train.loop import train_loop

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)  # fmt: skip
    try:
        # the average itself: rank r holds gradients r + 1 (two dtypes, one parameter unused)
        params = [torch.zeros(3, requires_grad=True), torch.zeros(2, 2, dtype=torch.float64,
                  requires_grad=True), torch.zeros(4, requires_grad=True)]  # fmt: skip
        for p in params[:2]:
            p.grad = torch.full_like(p, rank + 1.0)
        GradientAllReduce(params)()
        out: dict = {"averaged": [p.grad for p in params]}
        # the collator's counts are summed over the ranks (rank r counted r + 1 and 2)
        counts = {"missing_features.text": rank + 1, "truncated_nodes.text": 2}
        collated = SimpleNamespace(drain_counts=lambda: dict(counts))
        out["collate_counts"] = collate_counter(collated)()
        tokenizer = train_tokenizer(CORPUS, vocab_size=300)
        backbones = make_tiny_backbones(tokenizer)
        for graphed in (False, True):
            model = make_model(backbones).train()
            batches = shape_cycle(model, tokenizer, seed=100 * rank)  # each rank its own data
            cfg = step_graph_config(STEPS, graphed)
            cfg.train.grad_accum = 2
            logs: list[str] = []
            run = dict(
                model=model, batches=iter(batches * STEPS), cfg=cfg, device=torch.device("cpu"),
                report=lambda metrics, state: None, log=logs.append, is_main=rank == 0,
                collate_counts=collate_counter(collated),
            )  # fmt: skip
            bare = model.adapter
            model.adapter = DistributedDataParallel(bare, broadcast_buffers=False)
            if graphed:  # as Ray Train sets it up: no DDP, rank 0's weights broadcast
                out["refused_ddp"] = _refusal(train_loop, **run, no_sync=model.adapter.no_sync)
                model.adapter = bare
                out["refused_no_ddp"] = _refusal(train_loop, **{**run, "cfg": step_graph_config(
                    STEPS, False)})  # fmt: skip
                with torch.no_grad():  # rank 1 starts elsewhere: only the broadcast aligns it
                    for p in bare.parameters():
                        p.add_(rank * 0.5)
                broadcast_module(bare)
                history = train_loop(**run)
            else:
                history = train_loop(**run, no_sync=model.adapter.no_sync)
            out[graphed] = {
                "adapter": model.adapter_state_dict(),
                "logs": logs,
                "wrapped_after": isinstance(model.adapter, DistributedDataParallel),
                "history": history,
            }
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _refusal(train_loop, **run) -> str:
    try:
        train_loop(**run)
    except ValueError as err:
        return str(err)
    return "not refused"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_run, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _distance(a: dict, b: dict) -> torch.Tensor:
    return torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()


def test_step_graph_under_ddp_trains_like_ddp(ranks, tiny_backbones):
    from test_model import make_model
    from test_step_graph import RELATIVE_TOLERANCE

    initial = make_model(tiny_backbones).adapter_state_dict()
    plain, graphed = ranks[0][False]["adapter"], ranks[0][True]["adapter"]
    moved = _distance(plain, initial)
    assert moved > 0.05 and _distance(graphed, plain) / moved < RELATIVE_TOLERANCE
    for run in (False, True):  # the replicas stay identical: every rank applied the same mean
        assert all(torch.equal(ranks[0][run]["adapter"][k], v)
                   for k, v in ranks[1][run]["adapter"].items())  # fmt: skip
    logs = ranks[0][True]["logs"]
    assert any("data-parallel: gradients averaged by one all-reduce" in line for line in logs)
    assert not ranks[0][True]["wrapped_after"] and not ranks[1][True]["wrapped_after"]


def test_the_step_graph_refuses_ddp_and_several_ranks_need_one_or_the_other(ranks):
    for rank in ranks:
        assert "pass the bare adapter, not a DDP wrapper" in rank["refused_ddp"]
        assert "2 ranks train without DDP" in rank["refused_no_ddp"]


def test_collate_counts_are_summed_over_the_ranks_at_every_evaluation(ranks):
    summed = {"missing_features.text": 1 + 2, "truncated_nodes.text": 2 + 2}
    for rank in ranks:
        assert rank["collate_counts"] == summed
        for run in (False, True):
            assert rank[run]["history"] and all(
                {k: h[k] for k in summed} == summed for h in rank[run]["history"]
            )
    assert any("collated batches since the last report" in line for line in ranks[0][True]["logs"])


def test_gradients_are_averaged_over_the_ranks(ranks):
    for rank in ranks:
        first, second, unused = rank["averaged"]
        assert torch.equal(first, torch.full((3,), 1.5))
        assert torch.equal(second, torch.full((2, 2), 1.5, dtype=torch.float64))
        assert unused is None


def test_gradient_all_reduce_needs_a_process_group():
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        GradientAllReduce([torch.zeros(2, requires_grad=True)])
