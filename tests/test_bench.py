"""The bench scripts' --quick paths and the library pieces they measure.

Each bench runs in this process on CPU-sized shapes; the tests check the printed table's
columns and that every number is finite and sane, never a timing. The pipeline bench starts Ray
four times and is marked slow.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import random_inputs, with_soft_tokens

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

import diffusion  # noqa: E402
import generate  # noqa: E402
import lm_alone  # noqa: E402
import oversmoothing  # noqa: E402
import profile_step  # noqa: E402
import run_all as gpu_all  # noqa: E402
import train_step  # noqa: E402

from g4mm.data.collate import GraphCollator, length_bucketed_batches  # noqa: E402
from g4mm.data.schema import feature_key  # noqa: E402
from g4mm.model.encoders import image_feature_dim, text_feature_dim  # noqa: E402
from g4mm.model.layout import LayoutSpec  # noqa: E402

ANCHOR = train_step.DEFAULT_ANCHOR  # bench/anchors/: in the repository


@pytest.fixture(autouse=True)
def keep_threads():
    """The benches pin torch to one CPU thread; give the session its setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def header_of(out: str, first: str) -> list[str]:
    line = next(x for x in out.splitlines() if x.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# ---------------------------------------------------------------------------- train step


def test_train_step_quick_prints_ours_beside_the_official_step(tmp_path, capsys):
    out_json = tmp_path / "train.json"
    args = ["--quick", "--batch", "2", "--steps", "2", "--warmup", "1", "--official-steps", "2",
            "--step-graph", "--anchor", str(ANCHOR), "--json", str(out_json)]  # fmt: skip
    assert train_step.main(args) == 0
    assert header_of(capsys.readouterr().out, "step") == train_step.HEADERS
    result = json.loads(out_json.read_text())
    rows = result["rows"]
    kinds = {(r["step"], r.get("kind")) for r in rows}
    assert {("ours", "full"), ("ours", "bucketed"), ("ours", "random")} <= kinds
    graphed = [r for r in rows if r["step"] == "ours + step graph"]
    assert {r["kind"] for r in graphed} == {"full", "bucketed", "random"}
    assert all("graphs recorded" in r["note"] and "failed" not in r["note"] for r in graphed)
    for r in rows:
        for key in ("samples_s", "tokens_s", "tflops", "mfu"):
            assert finite_positive(r[key]), (r["step"], key, r[key])
    alone = [r for r in rows if r.get("kind") == "lm alone"]
    assert [r["step"] for r in alone] == ["frozen LM alone"]  # CPU: no graph or cuDNN rows
    assert all("x_official" not in r for r in alone)  # not a training step
    ours = [r for r in rows if r["step"] == "ours"]
    # at most 64 + 16 tokens per sample; full rows hold exactly 80, and the two rates'
    # ratio may land an ulp above it (failed once in a fresh clone: not a real excess)
    assert all(r["tokens_s"] / r["samples_s"] <= 80 * (1 + 1e-9) for r in ours)
    official = [r for r in rows if r["step"] == "official-shaped fp32"]
    assert [r["batch"] for r in official] == [2]
    assert all(finite_positive(r["x_official"]) for r in ours)
    assert finite_positive(result["meta"]["peak_tflops"])


def test_lm_flops_formula_matches_torch_flop_counter():
    """The bench's forward + input-gradient count equals what torch counts on the real LM, up
    to the attention term's causal halving (the counter charges the full n x n)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import OPTForCausalLM

    shape = train_step.QUICK
    config = train_step.lm_config(shape)
    torch.manual_seed(0)
    lm = OPTForCausalLM._from_config(config, attn_implementation="eager").eval()
    lm.requires_grad_(False)
    n, t = 24, 6
    embeds = torch.randn(1, n, shape.hidden, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        hidden = lm.base_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        lm.get_output_embeddings()(hidden[:, -t:]).sum().backward()
    counted = counter.get_total_flops()
    d, layers = shape.hidden, shape.layers
    full_attention = 4 * layers * n * n * d  # eager: QK^T and AV over the full n x n
    expected = train_step.lm_train_flops(config, n, t) - 3 * 2 * layers * n * n * d
    expected += 3 * full_attention
    assert counted == pytest.approx(expected, rel=0.02)


def test_cudnn_rows_are_kept_apart_on_request():
    """``--cudnn off`` drops every cuDNN row, ``only`` keeps just them (gpu_all runs them in
    a last section of their own), ``also`` keeps both; CPU gets neither graph nor cuDNN rows."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # plans only: nothing runs on CUDA
    every = train_step.lm_alone_plans(cuda, True, True, "also")
    assert len(every) == 6 and len(set(every)) == 6
    assert [p for p in every if p.cudnn] == train_step.lm_alone_plans(cuda, True, True, "only")
    assert [p for p in every if not p.cudnn] == train_step.lm_alone_plans(cuda, True, True, "off")
    assert train_step.lm_alone_plans(cpu, True, True, "also") == [
        lm_alone.LMAlone(),
        lm_alone.LMAlone(compile_lm=True),
    ]
    assert not train_step.keeps("only", train_step.Plan("full", step_graph=True))
    assert train_step.keeps("only", train_step.Plan("full", step_graph=True, cudnn=True))


def test_lm_alone_does_exactly_the_lm_flops_the_rows_count():
    """The LM-alone micro-step (forward, head at the targets, input-gradient backward) runs
    the linear and head FLOPs of the bench's formula and no more: a head over every position
    or weight gradients for the frozen LM would add to them. SDPA is left out of the
    comparison (the counter skips the CPU kernel, and charges a causal product in full)."""
    from torch.utils.flop_counter import FlopCounterMode

    shape, batch = train_step.QUICK, 2
    model = train_step.build_model(shape, torch.device("cpu"))
    tokens, targets = shape.input_tokens + shape.target_tokens, shape.target_tokens
    inputs = lm_alone.lm_work_inputs(model, batch, tokens, targets)
    with FlopCounterMode(display=False) as counter:
        loss, grad = lm_alone.lm_work(model, torch.device("cpu"), *inputs)
    counts = counter.get_flop_counts()["Global"]
    matmuls = sum(n for op, n in counts.items() if "scaled_dot_product" not in str(op))
    attention = 3 * 2 * shape.layers * tokens**2 * shape.hidden
    formula = train_step.lm_train_flops(model.lm.config, tokens, targets)
    assert matmuls == batch * (formula - attention)
    assert torch.isfinite(loss) and grad.shape == inputs[0].shape and grad.abs().sum() > 0


def test_every_compiled_row_starts_from_a_fresh_dynamo():
    """Dynamo shares code across wrappers of one function (a new model's forward), with the
    lengths it has seen: after two lengths, a new wrapper runs the dynamic-shape code at one
    length, and code traced under flash serves a cuDNN row. ``fresh_dynamo`` drops both."""
    from g4mm.train.loop import training_sdpa

    dynamic: list[bool] = []

    def backend(gm, inputs):
        sizes = [s for x in inputs if isinstance(x, torch.Tensor) for s in x.shape]
        dynamic.append(any(isinstance(v, torch.SymInt) for v in [*inputs, *sizes]))
        return gm.forward

    def attend(q):
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)

    lm_alone.fresh_dynamo()
    earlier_row = torch.compile(attend, backend=backend)
    earlier_row(torch.randn(1, 2, 8, 4))
    earlier_row(torch.randn(1, 2, 12, 4))  # a second length: compiled for any length
    assert dynamic == [False, True]
    torch.compile(attend, backend=backend)(torch.randn(1, 2, 8, 4))
    assert dynamic == [False, True]  # a new wrapper reused the dynamic code: not compiled
    with training_sdpa(cudnn=True):
        torch.compile(attend, backend=backend)(torch.randn(1, 2, 8, 4))
    assert len(dynamic) == 2  # nor under another SDPA setting
    lm_alone.fresh_dynamo()
    torch.compile(attend, backend=backend)(torch.randn(1, 2, 8, 4))
    assert dynamic == [False, True, False]  # traced afresh, for this one length


# ----------------------------------------------------------------------------- diffusion


def test_diffusion_quick_table_and_dense_limit(tmp_path, capsys):
    out_json = tmp_path / "diffusion.json"
    assert diffusion.main(["--quick", "--repeats", "1", "--json", str(out_json)]) == 0
    assert header_of(capsys.readouterr().out, "impl") == diffusion.HEADERS
    result = json.loads(out_json.read_text())
    rows = result["rows"]
    sparse = [r for r in rows if r["impl"] == "sparse"]
    assert len(sparse) == len(diffusion.QUICK_SIZES)
    for r in sparse:
        assert finite_positive(r["ms"]) and finite_positive(r["ns_edge"]), r
        assert r["peak_mib"] is None or 0 <= r["peak_mib"] < 4096, r
    skipped = [r for r in rows if r["impl"] == "dense" and "skipped" in r.get("note", "")]
    assert skipped and all("GiB" in r["note"] for r in skipped)
    ran = [r for r in rows if r["impl"] == "dense" and r.get("ms")]
    assert ran and all(finite_positive(r["ns_dense"]) for r in ran)
    assert math.isfinite(result["meta"]["sparse_slope"])


# ------------------------------------------------------------------------------ generate


def test_generate_quick_cached_equals_uncached(tmp_path, capsys):
    out_json = tmp_path / "generate.json"
    assert generate.main(["--quick", "--repeats", "1", "--json", str(out_json)]) == 0
    assert header_of(capsys.readouterr().out, "KV cache") == generate.HEADERS
    result = json.loads(out_json.read_text())
    assert result["meta"]["same_tokens"] is True  # fp32 CPU: token for token
    assert finite_positive(result["meta"]["ratio"])
    for r in result["rows"]:
        assert r["new_tokens"] == 8 and finite_positive(r["tok_s"])


# ------------------------------------------------------------------------------- gpu_all


def test_gpu_all_quick_prints_one_summary_table(tmp_path, capsys):
    out_json = tmp_path / "all.json"
    argv = ["--quick", "--no-compile", "--anchor", "", "--only", "gpu_check", "train_step",
            "profile", "generate", "cudnn", "--json", str(out_json)]  # fmt: skip
    assert gpu_all.main(argv) == 0
    out = capsys.readouterr().out
    assert header_of(out.split("== summary")[-1], "bench") == gpu_all.HEADERS
    rows = json.loads(out_json.read_text())["rows"]
    sections = {"gpu_check", "train_step", "profile", "generate", "cudnn", "all"}
    assert {r[0] for r in rows} == sections
    assert ["cudnn", "cuDNN attention rows", "skipped: no CUDA device", "", "info"] in rows
    profiled = [r for r in rows if r[0] == "profile" and "(profiled)" in r[1]]
    assert [r[1] for r in profiled] == ["default b=8 full (profiled)",
                                        "step-graph b=8 full (profiled)"]  # fmt: skip
    assert "host busy" in profiled[0][2] and "matmul" in profiled[0][2]
    ceiling = [r for r in rows if r[1].startswith("LM work alone")]
    assert ceiling and "frozen LM alone: MFU" in ceiling[0][2]
    assert all(r[4] in ("info", "PASS") for r in rows), rows  # CPU: no GPU verdicts
    assert not any(r[1] == "section failed" for r in rows)


def test_ddp_step_graph_check_passes_on_cpu():
    """gpu_check's DDP row (two ranks, plain DDP vs step graph) runs end to end here; the same
    code records and replays on a GPU. Without the all-reduce it FAILs (ranks not identical,
    0.66 of the movement apart: checked by hand)."""
    import ddp_step_graph

    what, result, verdict = ddp_step_graph.ddp_step_graph_check("cpu")
    assert "2 gloo ranks" in what
    assert verdict == "PASS", result
    assert "ranks identical True" in result and "graphs recorded" in result


# ------------------------------------------------------------------- padding-free batches


def test_length_bucketed_batches_cover_each_sample_once_and_pad_less():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 1000, size=1003).tolist()
    batches = length_bucketed_batches(lengths, 8, seed=1, window=16)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and all(len(b) == 8 for b in batches)
    assert len(flat) >= 1003 - 16 * 8  # at most one short batch dropped per window

    def padded(groups):
        return sum(len(g) * max(lengths[i] for i in g) for g in groups)

    plain = length_bucketed_batches(lengths, 8, seed=1, window=1)
    assert padded(batches) / sum(lengths[i] for i in flat) < 1.1
    assert padded(plain) / sum(lengths[i] for b in plain for i in b) > 1.3
    assert length_bucketed_batches(lengths, 8, seed=1, window=16) == batches  # seeded
    with pytest.raises(ValueError):
        length_bucketed_batches(lengths, 0)


def test_token_lengths_match_the_collated_masks(tokenizer):
    texts = ["red circle", "blue square"]
    feats = {feature_key("text", t): np.ones(4, np.float32) for t in texts}
    collator = GraphCollator(
        tokenizer, feats, {}, text_dim=4, image_dim=4,
        layout=LayoutSpec("pooled", "after_text", 12, 2, 1, groups=()), max_target_tokens=5,
    )  # fmt: skip
    rows = [
        {"prompt": "a long prompt about the red circle in the first section of the page",
         "target_text": "the circle is red and round", "text_nodes": texts, "image_paths": []},
        {"prompt": "short", "target_text": "a star", "text_nodes": texts[:1], "image_paths": []},
    ]  # fmt: skip
    inputs = collator(rows)
    real = (inputs.prompt_mask.sum(1) + inputs.target_mask.sum(1)).tolist()
    assert collator.token_lengths(rows) == real


def test_padding_free_forward_matches_the_masked_path(tiny_backbones, tokenizer):
    """Graph4MM.forward (real tokens moved to the front, no attention mask) gives the masked
    layout's target logits, for the baselines too (their absent nodes' soft tokens are
    padding inside the prefix)."""
    from test_model import make_model

    for lm_name in ("opt", "llama"):
        for variant in ("hop_diffused", "mmgl_concat"):
            model = make_model(tiny_backbones, variant, lm_name).eval()
            inputs = with_soft_tokens(
                random_inputs(
                    6, _text_dim(model), _image_dim(model), len(tokenizer),
                    tokenizer.pad_token_id, seed=3,
                ),
                model.bare_adapter, tokenizer.pad_token_id,
            )  # fmt: skip
            with torch.no_grad():
                packed = model(inputs).logits
                masked = model._masked_target_logits(inputs)
            real = inputs.target_mask
            torch.testing.assert_close(packed[real], masked[real], atol=1e-5, rtol=1e-5)
            # the loss only counts real targets, whatever sits in the padding
            noisy = copy.deepcopy(inputs)
            noisy.prompt_ids[~noisy.prompt_mask] = 7
            noisy.target_ids[~noisy.target_mask] = 9
            with torch.no_grad():
                torch.testing.assert_close(model(noisy).loss, model(inputs).loss)


def _text_dim(model) -> int:

    return text_feature_dim(model.lm)


def _image_dim(model) -> int:

    return image_feature_dim(model.vision)


# ----------------------------------------------------------------------------- the loop


class _Uncompilable:
    """A stand-in model whose compiled forward fails, like a torch.compile error would."""

    def __init__(self) -> None:
        self.compiled = False
        self.calls: list[bool] = []

    def compile_parts(self, enabled: bool = True, scope: str = "lm", **options) -> None:
        self.compiled = enabled
        self.calls.append(enabled)

    def __call__(self, inputs):
        if self.compiled:
            raise RuntimeError("inductor: backend failed")
        raise AssertionError("the probe must only run compiled")

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


def test_compile_falls_back_to_eager_when_compiling_fails(tokenizer):
    from g4mm.train.loop import compile_or_fallback

    model, logs = _Uncompilable(), []
    inputs = random_inputs(2, 4, 4, len(tokenizer), tokenizer.pad_token_id)
    ok = compile_or_fallback(model, inputs, torch.device("cpu"), "auto", logs.append)
    assert ok is False and model.calls == [True, False] and not model.compiled
    assert "torch.compile failed" in logs[0] and "backend failed" in logs[0]


@pytest.mark.parametrize(
    ("device", "native", "precision", "frozen", "expected"),
    [
        ("cuda", True, "auto", "auto", torch.bfloat16),
        ("cuda", True, "bf16", "auto", torch.bfloat16),
        ("cuda", True, "fp32", "auto", torch.float32),
        ("cuda", True, "auto", "fp32", torch.float32),
        ("cuda", False, "auto", "auto", torch.float32),  # a V100: auto stays fp32
        ("cuda", False, "fp32", "bf16", torch.bfloat16),
        ("cpu", False, "auto", "auto", torch.float32),
        ("cpu", False, "fp32", "bf16", torch.bfloat16),
    ],
)
def test_frozen_dtype_follows_autocast(monkeypatch, device, native, precision, frozen, expected):
    """The device's answer to "native bf16?" is set here (this machine has no GPU): the rule
    under test is ours, not the query."""
    from g4mm.train.loop import frozen_dtype_for, native_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: native)
    native_bf16.cache_clear()  # the answer is asked once per device
    try:
        assert frozen_dtype_for(torch.device(device), precision, frozen) == expected
    finally:
        native_bf16.cache_clear()


def test_training_with_bf16_frozen_lm_moves_only_the_fp32_adapter(tiny_backbones, tokenizer):
    """``train.frozen_dtype=bf16``: the LM is stored and run in bf16, the adapter keeps fp32
    master weights and is the only thing that changes; the loss stays finite."""
    from test_model import batch_for, make_model

    from g4mm.config import ExperimentConfig
    from g4mm.train.loop import train_loop

    model = make_model(tiny_backbones).cast_frozen(torch.bfloat16)
    assert {p.dtype for p in model.lm.parameters()} == {torch.bfloat16}
    lm_before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    adapter_before = {k: v.clone() for k, v in model.adapter.state_dict().items()}
    cfg = ExperimentConfig()
    cfg.train.max_steps = cfg.train.eval_every = 3
    cfg.train.warmup_steps, cfg.train.lr = 0, 1e-3
    batches = iter([batch_for(model, tokenizer, b=2, seed=s) for s in range(3)])
    history = train_loop(model=model, batches=batches, cfg=cfg, device=torch.device("cpu"),
                         report=lambda m, s: None, log=lambda _: None)  # fmt: skip
    assert math.isfinite(history[-1]["train_loss"])
    assert all(torch.equal(v, model.lm.state_dict()[k]) for k, v in lm_before.items())
    after = model.adapter.state_dict()
    assert {v.dtype for v in after.values() if v.is_floating_point()} == {torch.float32}
    assert any(not torch.equal(v, after[k]) for k, v in adapter_before.items())


def test_gpu_check_training_default_check_runs_on_cpu(tokenizer):
    """bench/gpu/gpu_checks.py's train_loop check (bf16-stored LM on CUDA) on CPU, where training
    keeps fp32: the same code path, so its first loss equals the reference exactly."""
    import gpu_checks as gpu_check
    import gpu_fixtures

    model = gpu_fixtures.tiny_model("opt", "hop_diffused", "cpu", tokenizer)
    inputs = gpu_fixtures.tiny_batch(model, tokenizer, 3)
    name, result, verdict = gpu_check.bf16_stored_training_check("opt", "cpu", tokenizer, inputs)
    assert verdict == "PASS", result
    assert "stored float32" in name and "LM frozen True" in result


@pytest.mark.slow
def test_compiled_forward_scope_matches_eager_loss_and_gradients(tiny_backbones, tokenizer):
    """``train.compile_scope=forward``: the whole teacher-forced pass as one graph gives the
    eager loss and adapter gradients (CPU inductor here; the GPU numbers are in RESULTS.md)."""
    from test_model import batch_for, make_model

    model = make_model(tiny_backbones).eval()  # no dropout: both passes see the same graph
    batch = batch_for(model, tokenizer, b=3)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        out = model(batch)
        out.loss.backward()
        grads = {
            n: p.grad.clone() for n, p in model.adapter.named_parameters() if p.grad is not None
        }
        return out.loss.detach(), grads

    eager_loss, eager_grads = loss_and_grads()
    model.compile_parts(True, scope="forward")
    assert model.is_compiled
    try:
        loss, grads = loss_and_grads()
    finally:
        model.compile_parts(False)
    assert not model.is_compiled
    torch.testing.assert_close(loss, eager_loss, rtol=1e-4, atol=1e-5)
    assert grads.keys() == eager_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-3, atol=1e-5, msg=name)
    with pytest.raises(ValueError, match="compile scope 'everything'"):
        model.compile_parts(True, scope="everything")


@pytest.mark.parametrize("cudnn", [False, True])
def test_training_steps_use_cudnn_attention_only_when_asked(cudnn):
    """train_loop runs forward and backward with SDPA's cuDNN backend switched off (it rebuilds a
    plan per new sequence length), or with ``train.cudnn_attention`` tried first, and restores
    the global setting afterwards."""
    from torch.nn.attention import SDPBackend

    from g4mm.config import ExperimentConfig
    from g4mm.train.loop import train_loop

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, inputs):
            first = torch._C._get_sdp_priority_order()[0]
            seen.append((torch.backends.cuda.cudnn_sdp_enabled(), first))
            return SimpleNamespace(loss=self.w * 2.0)

        def parameter_groups(self, weight_decay):
            return [{"params": [self.w], "weight_decay": 0.0}]

    cfg = ExperimentConfig().updated({"train.cudnn_attention": cudnn})
    cfg.train.max_steps = cfg.train.eval_every = 2
    before = torch.backends.cuda.cudnn_sdp_enabled(), torch._C._get_sdp_priority_order()
    batch = SimpleNamespace(target_mask=torch.ones(1, 2), prompt_mask=torch.ones(1, 2),
                            batch_size=1, to=lambda device: batch)  # fmt: skip
    train_loop(model=Probe(), batches=iter([batch] * 2), cfg=cfg, device=torch.device("cpu"),
               report=lambda m, s: None, log=lambda _: None, is_main=False)  # fmt: skip
    if cudnn:
        assert seen == [(True, int(SDPBackend.CUDNN_ATTENTION))] * 2
    else:
        assert [enabled for enabled, _ in seen] == [False, False]
    assert (torch.backends.cuda.cudnn_sdp_enabled(), torch._C._get_sdp_priority_order()) == before


def test_profile_step_quick(capsys):
    argv = ["--quick", "--steps", "2", "--warmup", "1", "--batches", "2", "--profile",
            "--top", "3", "--settings", "default", "fp32-lm", "step-graph"]  # fmt: skip
    assert profile_step.main(argv) == 0
    out = capsys.readouterr().out
    assert "top operators by self host time" in out and "| fp32-lm | 8 | full |" in out
    assert out.count("host operator time by category") == 3 and "| matmul |" in out
    assert "| step-graph | 8 | full |" in out


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1", "matmul"),
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN", "matmul"),
        ("aten::addmm", "matmul"),
        ("void flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<64>>",
         "attention"),
        ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)",
         "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
        ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>",
         "update (clip, AdamW)"),
        ("triton_per_fused_native_layer_norm_0", "norm, softmax, loss"),
        ("triton_poi_fused_add_relu_3", "fused by inductor"),
        ("Memcpy HtoD (Pinned -> Device)", "copy, fill"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>",
         "copy, fill"),
        ("void at::native::index_elementwise_kernel<128, 4, gather>", profile_step.OTHER),
    ],
)  # fmt: skip
def test_profile_categories_name_kernels(name, expected):
    assert profile_step.category(name) == expected


def test_build_optimizer_is_foreach_on_cpu(tiny_backbones):
    from types import SimpleNamespace

    from test_model import make_model

    from g4mm.train.optim import build_optimizer

    cfg = SimpleNamespace(weight_decay=0.01, lr=1e-3, betas=(0.9, 0.95))
    opt = build_optimizer(make_model(tiny_backbones), cfg, torch.device("cpu"))
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]


# ------------------------------------------------------------------------------ pipeline


@pytest.mark.slow
def test_pipeline_bench_quick(capsys):
    import pipeline

    assert pipeline.main(["--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 1 -> 2, pinned |"))
    ratios = [float(r) for r in re.findall(r"\(x([0-9.]+)\)", row)]
    assert len(ratios) == 3 and all(r > 0 for r in ratios)
    assert "cache hit:" in out


def test_gpu_check_step_graph_check_runs_on_cpu(tokenizer):
    """bench/gpu/gpu_checks.py's whole-step CUDA-graph check, on CPU (where the static-input steps
    run eagerly): its comparison logic passes on a correct step graph."""
    import gpu_checks as gpu_check

    _, result, verdict = gpu_check.step_graph_check("opt", "cpu", tokenizer)
    assert verdict == "PASS", result
    assert "3 graphs recorded, 30 replays, 6 eager runs" in result, result
    assert "worst loss diff" in result


def test_oversmoothing_bench_reports_skip_and_trained_rows(tmp_path, capsys):
    out = tmp_path / "o.json"
    assert oversmoothing.main(["--seeds", "2", "--ks", "2,3", "--graphs", "sbm",
                               "--train-steps", "3", "--train-ks", "2", "--train-seeds", "2",
                               "--json", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    row = report["sbm"][0]
    assert row["k"] == 2 and len(row["per_seed"]["gat_skip_k"]) == 2
    assert 0 <= row["frac_hop_K3_gt_gat_skip"] <= 1
    trained = report["trained"]["2"]
    assert len(trained) == 2 and set(trained[0]) == {"hop", "gat", "gat_skip"}
    assert all(0 <= r[m]["accuracy"] <= 1 and r[m]["energy"] > 0 for r in trained for m in r)
    printed = capsys.readouterr().out
    assert "E(GAT^k + skip)" in printed and "Trained 3 steps" in printed
    # the skip stack is H + GAT(act(H)) layer by layer, on the same weights as the plain one
    torch.manual_seed(0)
    x, ei = torch.randn(6, 8), torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    args = SimpleNamespace(dim=8, heads=2)
    stack = oversmoothing.gat_stack(args, 2, 0)
    plain = oversmoothing.gat_forward(stack, x, ei)
    skip = oversmoothing.gat_forward(stack, x, ei, skip=True)
    torch.testing.assert_close(skip[0], x + plain[0])
    torch.testing.assert_close(skip[1], skip[0] + stack[1](torch.nn.functional.elu(skip[0]), ei))
