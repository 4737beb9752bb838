"""Shared fixtures: tiny real Hugging Face models built from configs (never downloaded)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the hub
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

import pytest
import torch

from g4mm.model.inputs import Graph4MMInputs, ModalityInputs
from g4mm.model.tiny import tiny_clip_vision, tiny_llama, tiny_opt, train_tokenizer

CORPUS = [
    "the red circle sits above the blue square in section two",
    "a green triangle with stripes appears in the parent section image",
    "products in the same community share colours and textures",
    "section summary: the page describes three shapes and their colours",
] * 8


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_backbones(tokenizer):
    return make_tiny_backbones(tokenizer)


def make_tiny_backbones(tokenizer):
    """(opt, llama, vision) with fixed random weights, hidden sizes 32 / 32 / 16 (the same in
    every process: the data-parallel tests build them in each rank)."""
    torch.manual_seed(0)
    opt = tiny_opt(tokenizer, hidden_size=32, num_layers=2, num_heads=2, max_positions=128)
    llama = tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, max_positions=128)
    vision, processor = tiny_clip_vision(image_size=16, patch_size=8, hidden_size=16)
    return opt.eval(), llama.eval(), vision.eval(), processor


def random_modality(b, n, dim, gen, min_nodes=0, p_edge=0.4) -> ModalityInputs:
    """Random padded subgraphs: sizes in [min_nodes, n], symmetric edges among real nodes."""
    sizes = torch.randint(min_nodes, n + 1, (b,), generator=gen)
    sizes[0] = n  # at least one full sample
    mask = torch.arange(n)[None] < sizes[:, None]
    adj = torch.rand(b, n, n, generator=gen) < p_edge
    adj = (adj | adj.transpose(1, 2)) & mask[:, :, None] & mask[:, None, :]
    adj &= ~torch.eye(n, dtype=torch.bool)
    hops = torch.randint(0, 3, (b, n), generator=gen) * mask
    feats = torch.randn(b, n, dim, generator=gen) * mask[..., None]
    return ModalityInputs(feats=feats, mask=mask, adj=adj, hops=hops)


def random_inputs(
    b: int,
    text_dim: int,
    image_dim: int,
    vocab: int,
    pad_id: int,
    seed: int = 0,
    prompt_len: int = 7,
    target_len: int = 5,
    nt: int = 5,
    np_: int = 3,
) -> Graph4MMInputs:
    """A random batch: left-padded prompts, right-padded targets, padded subgraphs."""
    gen = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(2, prompt_len + 1, (b,), generator=gen)
    prompt_lens[0] = prompt_len
    prompt_mask = torch.arange(prompt_len)[None] >= (prompt_len - prompt_lens)[:, None]
    prompt_ids = torch.randint(4, vocab, (b, prompt_len), generator=gen)
    prompt_ids = prompt_ids.masked_fill(~prompt_mask, pad_id)
    target_lens = torch.randint(1, target_len + 1, (b,), generator=gen)
    target_mask = torch.arange(target_len)[None] < target_lens[:, None]
    target_ids = torch.randint(4, vocab, (b, target_len), generator=gen)
    target_ids = target_ids.masked_fill(~target_mask, pad_id)
    text = random_modality(b, nt, text_dim, gen, min_nodes=1)
    image = random_modality(b, np_, image_dim, gen, min_nodes=0)
    owner = torch.randint(0, nt, (b, np_), generator=gen)  # each image's text node
    cross = torch.nn.functional.one_hot(owner, nt).bool() & image.mask[:, :, None]
    return Graph4MMInputs(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        text=text,
        image=image,
        target_ids=target_ids,
        target_mask=target_mask,
        cross_adj=cross & text.mask[:, None, :],
    )


def with_soft_tokens(inputs: Graph4MMInputs, adapter, pad_id: int) -> Graph4MMInputs:
    """``inputs`` with a slot after each row's prompt for every soft token of ``adapter`` that
    stands for a real node (or for the whole sample): the pooled layout's placement."""
    from g4mm.model.layout import TokenTable

    table = TokenTable(tuple(adapter.token_groups), inputs.text.mask.shape[1],
                       inputs.image.mask.shape[1])  # fmt: skip
    masks = {"text": inputs.text.mask, "image": inputs.image.mask}
    slots = []
    for b in range(inputs.batch_size):
        row: list[int] = []
        for g, group in enumerate(table.groups):
            nodes = [0] if group.per is None else masks[group.per][b].nonzero().view(-1).tolist()
            for node in nodes:
                row.extend(table.run(g, node))
        slots.append(row)
    return inputs.append_slots(slots, pad_id)


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory) -> str:
    """One artifact dir (tiny backbones + <dir>/prep cache) for the whole pytest session.

    The tiny backbones are built here, briefly pretrained on the synthetic corpus (the jobs
    pretrain them longer; the tests need them loadable and deterministic only).
    """
    from g4mm.config import load_config
    from g4mm.data.corpus import ensure_tiny_backbones
    from g4mm.data.synthetic import corpus_texts, write_synthetic_docs
    from g4mm.pipeline.cache import cache_key

    path = tmp_path_factory.getbasetemp() / "g4mm-shared-artifacts"
    cfg = load_config("smoke", [f"data.artifact_dir={path}"])
    if cache_key(cfg) is None:  # backbones not built yet in this session
        raw = tmp_path_factory.mktemp("corpus")
        d = cfg.data
        write_synthetic_docs(raw, num_pages=d.num_pages, image_size=d.image_size, seed=d.seed)
        ensure_tiny_backbones(cfg, corpus_texts(raw), pretrain_steps=40, vision_steps=20)
    assert cache_key(cfg) is not None
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory) -> str:
    """Every run the tests start is tracked (``train.tracking: mlflow``, the default) into one
    SQLite store of this session, never the checkout's ``runs/mlflow.db``: MLflow's own
    ``MLFLOW_TRACKING_URI``, inherited by every job subprocess and Ray worker."""
    import os

    uri = f"sqlite:///{tmp_path_factory.getbasetemp() / 'mlflow' / 'mlflow.db'}"
    (tmp_path_factory.getbasetemp() / "mlflow").mkdir(exist_ok=True)
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on loopback (its own SQLite store and artifact
    directory), as a cluster's runs would use: yields its URL."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.read().strip() == b"OK":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
