"""train.precision: bf16 autocast only where the device has native bf16; asked for elsewhere,
an error that says what to use instead (it used to fall back to fp32 silently)."""

from __future__ import annotations

import pytest
import torch

from g4mm.train.loop import autocast_for, frozen_dtype_for, uses_bf16

CPU = torch.device("cpu")


def test_auto_and_fp32_run_fp32_on_the_cpu():
    assert not uses_bf16(CPU, "auto") and not uses_bf16(CPU, "fp32")
    with autocast_for(CPU, "auto"):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert frozen_dtype_for(CPU, "auto", "auto") == torch.float32
    assert frozen_dtype_for(CPU, "auto", "bf16") == torch.bfloat16  # asked for: storage only


def test_bf16_without_native_support_is_an_error_naming_the_setting():
    with pytest.raises(ValueError, match=r"train.precision = 'bf16' needs a CUDA device.*'auto'"):
        uses_bf16(CPU, "bf16")
    with pytest.raises(ValueError, match="native bf16"):
        frozen_dtype_for(CPU, "bf16", "auto")
