"""Tests for g4mm.config: shipped configs, round-trips, overrides, inheritance, validation, CLI."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from g4mm.config import (
    CONFIG_DIR,
    DATASETS,
    VARIANTS,
    ConfigError,
    ExperimentConfig,
    add_config_arguments,
    available_configs,
    config_from_args,
    load_config,
    parse_override,
)

SHIPPED = (
    "default",
    "smoke",
    "products",
    "wikiweb2m-opt125m",
    "wikiweb2m-llama1b",
    "elefashion-opt125m",
)


# ---- shipped configs --------------------------------------------------------------------------


def test_all_shipped_configs_are_available() -> None:
    assert set(SHIPPED) <= set(available_configs())


@pytest.mark.parametrize("name", available_configs())
def test_every_shipped_config_loads_and_validates(name: str) -> None:
    cfg = load_config(name)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == name  # named after the file when the YAML does not say otherwise
    assert cfg.validate() is cfg
    assert cfg.data.dataset in DATASETS
    assert cfg.model.variant in VARIANTS


def test_shipped_config_values() -> None:
    default = load_config("default")
    assert (default.data.dataset, default.model.lm, default.model.vision) == (
        "synthetic-docs",
        "tiny",
        "tiny",
    )
    assert default.model.hidden_dim == 128
    assert (default.train.max_steps, default.train.eval_every) == (600, 200)

    smoke = load_config("smoke")
    assert smoke.data.num_pages == 24
    assert (smoke.model.hidden_dim, smoke.model.num_heads, smoke.model.num_query_tokens) == (
        64,
        2,
        4,
    )
    assert (smoke.train.max_steps, smoke.train.eval_every) == (20, 10)
    assert (smoke.eval.max_samples, smoke.eval.max_new_tokens) == (16, 12)
    assert smoke.data.dataset == default.data.dataset  # inherited from default

    products = load_config("products")
    assert products.data.dataset == "synthetic-products"
    assert products.tune.metric == "seen_accuracy"  # held-out classes never select
    assert products.eval.metrics == ["accuracy", "seen_accuracy", "zero_shot_accuracy"]

    opt = load_config("wikiweb2m-opt125m")
    assert (opt.data.dataset, opt.model.lm, opt.model.vision) == (
        "wikiweb2m",
        "opt-125m",
        "clip-vit-b16",
    )
    assert (opt.model.hidden_dim, opt.model.num_heads, opt.model.num_query_tokens) == (
        768,
        12,
        20,
    )
    assert (opt.data.max_input_tokens, opt.data.max_target_tokens) == (1024, 128)
    # the official layout: raw text, 4 graph tokens per image (5 images x 4 = 20)
    assert (opt.model.context, opt.model.token_placement, opt.model.tokens_per_image) == (
        "raw", "at_images", 4,
    )  # fmt: skip
    # every shipped config reads the raw layout
    for name in available_configs():
        assert load_config(name).model.context == "raw", name
    assert opt.train.betas == (0.9, 0.95)
    assert isinstance(opt.train.lr, float) and opt.train.lr == pytest.approx(1e-4)
    assert (opt.train.batch_size, opt.train.grad_accum, opt.train.warmup_steps) == (8, 16, 2000)
    assert (opt.train.max_steps, opt.train.eval_every) == (31250, 625)  # leaves its warm-up

    llama = load_config("wikiweb2m-llama1b")
    assert llama.model.lm == "llama-1b"
    assert llama.model.hidden_dim == 768 and llama.data.dataset == "wikiweb2m"

    fashion = load_config("elefashion-opt125m")
    assert fashion.data.dataset == "mmgraph"
    assert fashion.tune.metric == "accuracy"
    assert fashion.data.max_target_tokens == 8
    assert fashion.model.lm == "opt-125m"


# ---- round trips --------------------------------------------------------------------------------


def test_defaults_round_trip_through_save_yaml(tmp_path: Path) -> None:
    cfg = ExperimentConfig()
    path = cfg.save_yaml(tmp_path / "sub" / "config.yaml")
    loaded = load_config(str(path))
    assert loaded == cfg
    assert loaded.train.betas == (0.9, 0.95) and isinstance(loaded.train.betas, tuple)


@pytest.mark.parametrize("name", ["smoke", "wikiweb2m-llama1b"])
def test_named_config_round_trips_with_odd_values(tmp_path: Path, name: str) -> None:
    cfg = load_config(name, ["train.lr=1.5e-7", "eval.max_samples=null", "train.use_gpu=true"])
    cfg.data.input = "1e3"  # a string that PyYAML-style resolvers could mistake for a float
    cfg.name = "renamed"
    path = cfg.save_yaml(tmp_path / "c.yml")
    assert load_config(path) == cfg


def test_to_dict_from_dict_round_trip_and_yaml_safety() -> None:
    cfg = load_config("products")
    d = cfg.to_dict()
    assert d["train"]["betas"] == [0.9, 0.95]  # plain lists, safe for yaml.safe_dump / JSON
    yaml.safe_dump(d)
    assert ExperimentConfig.from_dict(d) == cfg
    assert ExperimentConfig.from_dict(None) == ExperimentConfig()
    assert ExperimentConfig.from_dict({"model": {"alpha": 0.2}}).model.alpha == 0.2


def test_flat_dict_and_updated() -> None:
    cfg = load_config("smoke")
    flat = cfg.to_flat_dict()
    assert flat["model.alpha"] == cfg.model.alpha and flat["name"] == "smoke"
    new = cfg.updated({"model.alpha": 0.5, "model.variant": "hop_aware"})
    assert (new.model.alpha, new.model.variant) == (0.5, "hop_aware")
    assert cfg.model.alpha == 0.1  # original untouched
    with pytest.raises(ConfigError, match=r"model\.alpha = 2\.0"):
        cfg.updated({"model.alpha": 2})


# ---- overrides ----------------------------------------------------------------------------------


def test_overrides_apply_with_typed_values() -> None:
    cfg = load_config(
        "smoke",
        [
            "model.alpha=0.3",
            "train.lr=1e-3",
            "train.max_steps=7",
            "train.betas=[0.8, 0.9]",
            "eval.metrics=[bleu4, cider]",
            "eval.max_samples=null",
            "model.variant=hop_aware",
            "train.compile=true",
            "train.use_gpu=false",
            "train.cpus_per_worker=1",
            "name=my-run",
        ],
    )
    assert cfg.model.alpha == 0.3 and isinstance(cfg.model.alpha, float)
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 7 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.eval.metrics == ["bleu4", "cider"]
    assert cfg.eval.max_samples is None
    assert cfg.model.variant == "hop_aware"
    assert cfg.train.compile is True
    assert cfg.train.use_gpu == "false"  # YAML bool normalised
    assert cfg.train.cpus_per_worker == 1.0 and isinstance(cfg.train.cpus_per_worker, float)
    assert cfg.name == "my-run"
    # untouched fields keep the smoke values
    assert cfg.model.hidden_dim == 64


def test_overrides_apply_in_order() -> None:
    cfg = load_config("default", ["model.alpha=0.3", "model.alpha=0.4"])
    assert cfg.model.alpha == 0.4


def test_parse_override() -> None:
    assert parse_override("model.alpha=0.3") == ("model.alpha", 0.3)
    assert parse_override("data.input=a=b") == ("data.input", "a=b")
    assert parse_override("train.lr=5e-5") == ("train.lr", 5e-5)


# ---- inheritance --------------------------------------------------------------------------------


def test_base_inheritance_by_name_and_relative_path(tmp_path: Path) -> None:
    parent = tmp_path / "parent.yaml"
    parent.write_text("base: smoke\nmodel:\n  alpha: 0.2\ntrain:\n  max_steps: 99\n")
    child_dir = tmp_path / "exp"
    child_dir.mkdir()
    child = child_dir / "child.yaml"
    child.write_text("base: ../parent.yaml\ntrain:\n  max_steps: 5\neval:\n  num_beams: 2\n")

    cfg = load_config(str(child))
    assert cfg.name == "child"
    assert cfg.train.max_steps == 5  # child overrides parent
    assert cfg.model.alpha == 0.2  # from parent
    assert cfg.model.hidden_dim == 64  # from smoke
    assert cfg.data.dataset == "synthetic-docs"  # from default, via smoke
    assert cfg.eval.num_beams == 2
    assert cfg.eval.max_new_tokens == 12  # sibling keys of a merged section survive
    # overrides come after the whole chain
    assert load_config(str(child), ["train.max_steps=3"]).train.max_steps == 3


def test_shipped_base_inheritance_merges_sections() -> None:
    smoke = load_config("smoke")
    default = load_config("default")
    assert smoke.model.alpha == default.model.alpha
    assert smoke.model.lm == default.model.lm
    assert smoke.model.hidden_dim != default.model.hidden_dim


def test_base_cycle_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"))


def test_missing_base_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: smok\n")
    with pytest.raises(ConfigError, match="did you mean 'smoke'"):
        load_config(str(tmp_path / "a.yaml"))


# ---- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("model.alpha=0", ["model.alpha = 0", "(0, 1)"]),
        ("model.alpha=1", ["model.alpha = 1", "(0, 1)"]),
        ("model.alpha=1.5", ["model.alpha = 1.5", "(0, 1)"]),
        ("model.num_hops=-1", ["model.num_hops = -1", ">= 0"]),
        ("data.tau=-1", ["data.tau = -1"]),
        ("model.num_query_tokens=0", ["model.num_query_tokens = 0", ">= 1"]),
        ("model.hidden_dim=65", ["model.hidden_dim = 65", "model.num_heads = 2"]),
        ("train.batch_size=0", ["train.batch_size = 0"]),
        ("eval.batch_size=-3", ["eval.batch_size = -3"]),
        ("train.lr=0", ["train.lr = 0"]),
        ("train.lr=-1e-4", ["train.lr = -0.0001"]),
        ("train.grad_clip=-1", ["train.grad_clip = -1"]),
        ("model.dropout=1", ["model.dropout = 1", "[0, 1)"]),
        ("data.num_pages=0", ["data.num_pages = 0"]),
        ("train.precision=fp16", ["train.precision = 'fp16'", "'fp32'"]),
        ("train.frozen_dtype=fp16", ["train.frozen_dtype = 'fp16'", "'bf16'"]),
        ("train.compile_mode=fast", ["train.compile_mode = 'fast'", "'reduce-overhead'"]),
        ("train.compile_scope=all", ["train.compile_scope = 'all'", "'lm+adapter'"]),
        ("model.diffusion_impl=spares", ["model.diffusion_impl = 'spares'", "'sparse'"]),
        ("model.gnn_type=gin", ["model.gnn_type = 'gin'", "'gcn'"]),
        ("tune.mode=maximum", ["tune.mode = 'maximum'", "'max'"]),
        ("train.use_gpu=sometimes", ["train.use_gpu = 'sometimes'", "'auto'"]),
        ("data.dataset=wikiweb", ["data.dataset = 'wikiweb'", "did you mean 'wikiweb2m'?"]),
        ("eval.metrics=[cidr]", ["eval.metrics[0] = 'cidr'", "did you mean 'cider'?"]),
        ("tune.metric=accuracy", ["tune.metric = 'accuracy'"]),
        ("tune.metric=loss", ["tune.mode = 'max' with tune.metric = 'loss'", "'min'"]),
        ("tune.metric=val_loss", ["tune.metric = 'val_loss'", "set tune.mode = 'min'"]),
        ("train.warmup_steps=20", ["train.warmup_steps = 20", "train.max_steps = 20"]),
        ("train.weight_decay=.nan", ["train.weight_decay = nan", "finite"]),
        ("train.cpus_per_worker=.inf", ["train.cpus_per_worker = inf", "finite"]),
    ],
)
def test_validation_rules_name_field_and_value(override: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("smoke", [override])
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_whole_forward_cuda_graphs_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="4.8 samples/s"):
        load_config("smoke", ["train.compile_scope=forward", "train.compile_mode=reduce-overhead"])
    cfg = load_config("smoke", ["train.compile_scope=forward", "train.compile_mode=default"])
    assert cfg.train.compile_scope == "forward"


def test_boundary_values_are_accepted() -> None:
    cfg = load_config(
        "smoke",
        ["model.alpha=0.999", "model.num_hops=0", "data.tau=0", "train.grad_clip=0"],
    )
    assert (cfg.model.alpha, cfg.model.num_hops, cfg.data.tau) == (0.999, 0, 0)
    assert load_config("smoke", ["model.alpha=0.001", "model.dropout=0"]).model.dropout == 0.0


def test_alpha_message_exact() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("default", ["model.alpha=1.5"])
    assert str(info.value) == "model.alpha = 1.5: must lie strictly in (0, 1)"


def test_unknown_variant_suggests_closest() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("smoke", ["model.variant=hop_difused"])
    message = str(info.value)
    assert message.startswith("model.variant = 'hop_difused' is not one of [")
    assert "'mmgl_gnn'" in message
    assert message.endswith("did you mean 'hop_diffused'?")


def test_unknown_key_in_override_suggests_closest() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("smoke", ["model.alpah=0.3"])
    assert "unknown key 'model.alpah'; did you mean 'model.alpha'?" in str(info.value)


def test_unknown_key_in_other_section_suggests_its_home() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key 'train\.alpha'; did you mean 'model\.alpha'"
    ):
        load_config("smoke", ["train.alpha=0.3"])


def test_unknown_key_in_yaml_suggests_closest_and_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("base: default\nmodel:\n  num_hopz: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert "unknown key 'model.num_hopz'; did you mean 'model.num_hops'?" in message
    assert "bad.yaml" in message


@pytest.mark.parametrize("source", ["override", "yaml", "dict"])
def test_unknown_section_is_rejected(tmp_path: Path, source: str) -> None:
    with pytest.raises(ConfigError) as info:
        if source == "override":
            load_config("smoke", ["modle.alpha=0.3"])
        elif source == "yaml":
            path = tmp_path / "bad.yaml"
            path.write_text("modle:\n  alpha: 0.3\n")
            load_config(str(path))
        else:
            ExperimentConfig.from_dict({"modle": {"alpha": 0.3}})
    assert "unknown section 'modle'; did you mean 'model'?" in str(info.value)


def test_unknown_section_without_close_match_lists_sections() -> None:
    with pytest.raises(ConfigError, match=r"unknown section 'zzz'.*'train'"):
        ExperimentConfig.from_dict({"zzz": {}})


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.batch_size=big", "train.batch_size = 'big': expected int"),
        ("train.batch_size=true", "train.batch_size = True: expected int"),
        ("train.batch_size=2.5", "train.batch_size = 2.5: expected int"),
        ("model.alpha=high", "model.alpha = 'high': expected float"),
        ("model.alpha=false", "model.alpha = False: expected float"),
        ("model.lm=3", "model.lm = 3: expected str"),
        ("train.compile=1", "train.compile = 1: expected bool"),
        ("train.betas=[0.9]", "train.betas = [0.9]: expected list of 2 floats"),
        ("eval.metrics=cider", "eval.metrics = 'cider': expected list of str"),
        ("eval.max_samples=all", "eval.max_samples = 'all': expected int or null"),
        ("data.input=[a]", "data.input = ['a']: expected str or null"),
    ],
)
def test_bad_types_name_field_and_expected_type(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("smoke", [override])
    assert expected in str(info.value)


def test_validate_catches_values_set_in_code() -> None:
    cfg = load_config("smoke")
    cfg.model.alpha = 0
    with pytest.raises(ConfigError, match=r"model\.alpha = 0\.0"):
        cfg.validate()
    cfg = load_config("smoke")
    cfg.train.batch_size = "big"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"train\.batch_size = 'big': expected int"):
        cfg.validate()


def test_validate_normalises_types_in_place() -> None:
    cfg = ExperimentConfig()
    cfg.train.lr = 1  # type: ignore[assignment]
    cfg.train.betas = [0.5, 0.6]  # type: ignore[assignment]
    cfg.train.use_gpu = True  # type: ignore[assignment]
    cfg.validate()
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.betas == (0.5, 0.6)
    assert cfg.train.use_gpu == "true"


def test_several_errors_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("smoke", ["model.alpha=2", "model.num_hops=-1"])
    assert len(info.value.errors) == 2
    assert "model.alpha = 2.0" in str(info.value) and "model.num_hops = -1" in str(info.value)


@pytest.mark.parametrize(
    "override",
    ["model.alpha", "alpha=0.3", "=0.3", "model.=0.3", ".alpha=0.3", "model.alpha.x=1"],
)
def test_malformed_override_is_named(override: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("smoke", [override])
    message = str(info.value)
    assert "malformed override" in message
    assert repr(override) in message


def test_unparsable_override_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"override 'model\.alpha=\[1'"):
        load_config("smoke", ["model.alpha=[1"])


def test_unknown_config_name_lists_available_and_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("smok")
    message = str(info.value)
    assert "unknown config 'smok'" in message
    assert "did you mean 'smoke'?" in message
    for name in SHIPPED:
        assert name in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_non_mapping_yaml_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(path))
    path.write_text("model: 3\n")
    with pytest.raises(ConfigError, match="model = 3: expected a mapping"):
        load_config(str(path))


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# ---- argparse helpers ---------------------------------------------------------------------------


def test_argparse_helpers_parse_config_and_sets() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(
        ["--config", "smoke", "--set", "model.alpha=0.3", "--set", "train.lr=1e-3"]
    )
    cfg = config_from_args(args)
    assert cfg.name == "smoke"
    assert cfg.model.alpha == 0.3
    assert cfg.train.lr == 1e-3
    assert cfg.model.hidden_dim == 64


def test_argparse_defaults_and_help() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, default="smoke")
    cfg = config_from_args(parser.parse_args([]))
    assert cfg == load_config("smoke")
    help_text = " ".join(parser.format_help().split())
    for name in SHIPPED:
        assert name in help_text
    assert "--set" in help_text


def test_config_from_args_reports_through_parser(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="train")
    add_config_arguments(parser)
    args = parser.parse_args(["--set", "model.alpah=0.3"])
    with pytest.raises(SystemExit) as info:
        config_from_args(args, parser)
    assert info.value.code == 2
    assert "did you mean 'model.alpha'?" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        config_from_args(args)


# ---- packaging / import hygiene -----------------------------------------------------------------


def test_configs_ship_inside_the_package() -> None:
    assert CONFIG_DIR.is_dir()
    assert CONFIG_DIR.parent.name == "g4mm"
    for name in SHIPPED:
        assert (CONFIG_DIR / f"{name}.yaml").is_file()


def test_config_module_imports_no_heavy_dependencies() -> None:
    code = (
        "import sys, g4mm.config; "
        "bad = [m for m in ('ray', 'torch', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["train.step_graph=true", "train.compile=true", "train.compile_mode=reduce-overhead"],
         "already one CUDA graph"),
        (["train.step_graph_pad=0"], "train.step_graph_pad = 0"),
    ],
)  # fmt: skip
def test_step_graph_combinations_that_cannot_work_are_refused(overrides, fragment) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config("smoke", overrides)


def test_step_graph_composes_with_default_compile_and_accumulation() -> None:
    ok = load_config("smoke", ["train.step_graph=true", "train.compile=true"])
    assert ok.train.step_graph and ok.train.compile_mode == "default"
    paper = load_config("wikiweb2m-opt125m")  # the paper config records its steps: 8 x 16
    assert paper.train.step_graph and paper.train.grad_accum == 16


def test_layout_fields_are_checked():
    with pytest.raises(ConfigError, match="model.context = 'pooled' with model.token_placement"):
        load_config("wikiweb2m-opt125m", ["model.context=pooled"])
    cfg = load_config(
        "wikiweb2m-opt125m", ["model.context=pooled", "model.token_placement=after_text"]
    )
    assert cfg.model.context == "pooled"
    with pytest.raises(ConfigError, match="model.token_placement = 'at_image' is not one of"):
        load_config("default", ["model.token_placement=at_image"])
    with pytest.raises(ConfigError, match="model.tokens_per_image = 0"):
        load_config("default", ["model.tokens_per_image=0"])


def test_protocol_decides_the_reported_keys_and_what_tune_may_optimise():
    both = load_config("default")
    assert both.eval.protocol == "both"
    assert both.eval.keys == ["bleu4", "rougeL", "cider",
                              "paper_bleu4", "paper_rougeL", "paper_cider"]  # fmt: skip
    assert load_config("default", ["tune.metric=paper_cider"]).tune.metric == "paper_cider"
    with pytest.raises(ConfigError, match="tune.metric"):
        load_config("default", ["eval.protocol=coco", "tune.metric=paper_cider"])
    with pytest.raises(ConfigError, match="tune.metric"):
        load_config("default", ["eval.protocol=paper"])  # tune.metric cider is not reported
    with pytest.raises(ConfigError, match="eval.protocol"):
        load_config("default", ["eval.protocol=nist"])
    with pytest.raises(ConfigError, match="eval.class_score"):
        load_config("products", ["eval.class_score=max"])


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    """A "billion laughs" config (nested aliases: 400 bytes, gigabytes once expanded; measured
    1.7 s and 178 MB at 6 levels before aliases were refused) fails at once naming the file."""
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("base: smoke\neval:\n  metrics: *a8\n" + "\n".join(levels) + "\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml.*aliases are not allowed"):
        load_config(str(bomb))
