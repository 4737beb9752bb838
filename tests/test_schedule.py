"""The logged learning rate is the one the step just taken used (the scheduler has already
moved on to the next step's when the loop logs)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from g4mm.train.optim import build_scheduler, lr_of_last_step, warmup_cosine


def test_the_logged_lr_is_the_one_the_last_step_used():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=0.1)
    scheduler = build_scheduler(optimizer, SimpleNamespace(warmup_steps=3, max_steps=10))
    for step in range(10):
        used = optimizer.param_groups[0]["lr"]
        assert used == pytest.approx(0.1 * warmup_cosine(step, 3, 10))
        optimizer.step()
        scheduler.step()
        assert lr_of_last_step(scheduler) == pytest.approx(used)
    assert lr_of_last_step(scheduler) == pytest.approx(0.1 * warmup_cosine(9, 3, 10))
