"""Batched multi-LoRA: one base model in memory serves many PEFT LoRA adapters at once, never merged.

Each linear layer an adapter targets is wrapped once by LoraLinear: the base layer's output, plus for every
adapter present in the step `(x @ A^T) @ B^T` (scale folded into B) over that adapter's tokens. The engine
orders a step's prefill chunks by adapter and gathers each adapter's decode rows (which stay in slot order
for the attention), so the
delta is one pair of matmuls per adapter and part (the segmented form of S-LoRA/Punica's gather), whatever
the mix of adapters in the batch. Rows without an adapter run the base layer only, bit for bit as without
LoRA.

Adapters live in two tiers: every loaded adapter's weights on the CPU (`Adapters.loaded`), and at most
`max_loras` of them resident on the model's device (the slots), evicted least recently used among those
no running row needs. Reading and checking an adapter's files happens on the caller's thread; everything
that touches the model (wrapping, residency) happens on the engine thread.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .types import AdapterError, UnknownAdapterError

WEIGHT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
Group = tuple[int, slice | torch.Tensor]  # (adapter uid, its tokens among the step's packed tokens)


@dataclass
class Adapter:
    name: str
    path: str
    uid: int  # unique per load: a reloaded name is a new adapter (its prefix-cache entries are not reused)
    rank: int
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A [r, in], scaled B [out, r]), CPU

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


class LoraLinear(torch.nn.Module):
    """A base linear layer plus the deltas of the adapters resident on it, per token group (module doc)."""

    def __init__(self, base: torch.nn.Module, step: StepAdapters):
        super().__init__()
        self.base = base
        self.step = step
        self.resident: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # uid -> (A, B) on the device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        if not self.step.groups or not self.resident:
            return y
        flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.view(-1, y.shape[-1])
        for uid, rows in self.step.groups:
            ab = self.resident.get(uid)
            if ab is None:  # this adapter leaves this layer alone
                continue
            a, b = ab
            if isinstance(rows, slice):
                flat_y[rows] += (flat_x[rows] @ a.T) @ b.T
            else:  # decode rows of one adapter, scattered among the others' (rows stay in slot order)
                flat_y.index_add_(0, rows, (flat_x.index_select(0, rows) @ a.T) @ b.T)
        return y


class StepAdapters:
    """Which packed tokens of the step being computed use which adapter (set by the engine around each
    forward): per adapter uid, a slice of tokens or a tensor of token indices."""

    def __init__(self) -> None:
        self.groups: list[Group] = []


def shapes_of(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) features of every linear layer an adapter may target (not the output head)."""
    out = {}
    for name, module in model.named_modules():
        features = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if isinstance(features[0], int) and isinstance(features[1], int) and name != "lm_head":
            out[name] = (features[0], features[1])
    return out


def read_adapter(
    name: str, path: str, shapes: dict[str, tuple[int, int]], dtype: torch.dtype, max_rank: int, uid: int
) -> Adapter:
    """A PEFT LoRA adapter folder read and checked against the base model's layer shapes."""
    folder = Path(path.removeprefix("file://")).expanduser()
    if not folder.is_dir():
        raise AdapterError(name, f"no such folder {path}")
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterError(name, f"{path} holds no adapter_config.json (not a PEFT LoRA adapter)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(name, f"cannot read {config_file}: {exc}") from None
    _check_config(name, config)
    tensors = _read_tensors(name, folder)
    pairs: dict[str, dict[str, torch.Tensor]] = collections.defaultdict(dict)
    for key, tensor in tensors.items():
        m = WEIGHT_KEY.match(key)
        if m is None:
            raise AdapterError(name, f"holds {key}, which is not a LoRA A/B weight (modules_to_save?)")
        pairs[m["module"]][m["part"]] = tensor
    if not pairs:
        raise AdapterError(name, f"{path} holds no LoRA weights")
    weights = {}
    ranks = set()
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterError(name, f"{module} has lora_{next(iter(ab))} without its pair")
        a, b = ab["A"], ab["B"]
        if module not in shapes:
            raise AdapterError(name, f"targets {module}, which this base model does not have")
        fan_in, fan_out = shapes[module]
        rank = a.shape[0]
        if a.shape != (rank, fan_in) or b.shape != (fan_out, rank):
            raise AdapterError(
                name,
                f"does not fit this base model (trained for another?): {module} is {fan_in} -> {fan_out}, "
                f"the adapter's A is {tuple(a.shape)} and B {tuple(b.shape)}",
            )
        if rank > max_rank:
            raise AdapterError(name, f"rank {rank} ({module}) is above --max-lora-rank {max_rank}")
        ranks.add(rank)
        scale = _alpha(config, module, rank) / (math.sqrt(rank) if config.get("use_rslora") else rank)
        weights[module] = (a.to(dtype).contiguous(), (b.float() * scale).to(dtype).contiguous())
    return Adapter(name, path, uid, max(ranks), weights)


def _check_config(name: str, config: dict[str, Any]) -> None:
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise AdapterError(name, f"peft_type {kind} is not LoRA")
    if config.get("use_dora"):
        raise AdapterError(name, "DoRA adapters (use_dora) are not supported")
    if config.get("bias", "none") != "none":
        raise AdapterError(name, f"bias {config['bias']!r} is not supported (only 'none')")
    if config.get("modules_to_save"):
        raise AdapterError(name, f"modules_to_save {config['modules_to_save']} is not supported")


def _read_tensors(name: str, folder: Path) -> dict[str, torch.Tensor]:
    safetensors, pickled = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    try:
        if safetensors.is_file():
            from safetensors.torch import load_file

            return load_file(str(safetensors))
        if pickled.is_file():
            loaded: dict[str, torch.Tensor] = torch.load(pickled, map_location="cpu", weights_only=True)
            return loaded
    except Exception as exc:  # a truncated or foreign file: what it is matters less than which adapter
        raise AdapterError(name, f"cannot read its weights: {exc}") from None
    raise AdapterError(name, f"{folder} holds no adapter_model.safetensors")


def _alpha(config: dict[str, Any], module: str, rank: int) -> float:
    """lora_alpha, or the alpha_pattern entry matching this module as PEFT matches it (by name suffix)."""
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(alpha)
    return float(config.get("lora_alpha", rank))


class Adapters:
    """The loaded adapters (CPU) and the slots (device residency) of one engine's model."""

    def __init__(self, model: torch.nn.Module, max_loras: int, max_rank: int):
        self.model, self.max_loras, self.max_rank = model, max_loras, max_rank
        self.device, self.dtype = next(model.parameters()).device, next(model.parameters()).dtype
        self.shapes = shapes_of(model)
        self.step = StepAdapters()
        self.loaded: dict[str, Adapter] = {}
        self.resident: collections.OrderedDict[int, Adapter] = collections.OrderedDict()  # LRU first
        self.loads = 0
        self._wrapped: dict[str, LoraLinear] = {}
        self._uids = itertools.count(1)
        self._lock = threading.Lock()  # loaded: the API's threads and the engine thread

    # ---- any thread ----

    def load(self, name: str, path: str) -> Adapter:
        """Read and check an adapter, then make it servable under `name` (AdapterError if it cannot be)."""
        if self.max_loras <= 0:
            raise AdapterError(name, "this server serves no adapters (--max-loras 0)")
        with self._lock:
            if name in self.loaded:
                raise AdapterError(name, "is already loaded; unload it first")
        adapter = read_adapter(name, path, self.shapes, self.dtype, self.max_rank, next(self._uids))
        with self._lock:
            if name in self.loaded:
                raise AdapterError(name, "is already loaded; unload it first")
            self.loaded[name] = adapter
            self.loads += 1
        return adapter

    def unload(self, name: str) -> Adapter:
        """Stop serving `name`; rows already running finish with it, then its slot is freed."""
        with self._lock:
            adapter = self.loaded.pop(name, None)
        if adapter is None:
            raise UnknownAdapterError(name)
        return adapter

    def get(self, name: str) -> Adapter:
        with self._lock:
            adapter = self.loaded.get(name)
        if adapter is None:
            raise UnknownAdapterError(name)
        return adapter

    def names(self) -> list[str]:
        with self._lock:
            return list(self.loaded)

    # ---- the engine thread ----

    def can_host(self, uids: set[int]) -> bool:
        """Whether the slots can hold these adapters at once."""
        return len(uids) <= self.max_loras

    def make_resident(self, adapter: Adapter, pinned: set[int]) -> None:
        """Put an adapter on the device, evicting the least recently used adapters outside `pinned`."""
        if adapter.uid in self.resident:
            self.resident.move_to_end(adapter.uid)
            return
        while len(self.resident) >= self.max_loras:
            victim = next((u for u in self.resident if u not in pinned), None)
            if victim is None:
                raise RuntimeError("every LoRA slot is in use (admission should have waited)")
            self._evict(victim)
        for module, (a, b) in adapter.weights.items():
            layer = self._wrapped.get(module) or self._wrap(module)
            layer.resident[adapter.uid] = (a.to(self.device), b.to(self.device))
        self.resident[adapter.uid] = adapter

    def drop_unloaded(self, pinned: set[int]) -> list[int]:
        """Free the slots of adapters unloaded since (once no running row needs them); their uids."""
        with self._lock:
            live = {a.uid for a in self.loaded.values()}
        gone = [u for u in self.resident if u not in live and u not in pinned]
        for uid in gone:
            self._evict(uid)
        return gone

    def _evict(self, uid: int) -> None:
        for layer in self._wrapped.values():
            layer.resident.pop(uid, None)
        del self.resident[uid]

    def _wrap(self, module: str) -> LoraLinear:
        parent_name, _, child = module.rpartition(".")
        parent = self.model.get_submodule(parent_name)
        layer = LoraLinear(getattr(parent, child), self.step)
        setattr(parent, child, layer)
        self._wrapped[module] = layer
        return layer


def token_groups(decode: list[int], chunks: list[int], device: torch.device) -> list[Group]:
    """The adapter groups of a step whose decode tokens carry the uids `decode` (in slot order, which the
    attention needs) and whose chunk tokens, after them, carry `chunks` (ordered by uid). 0 = the base."""
    groups: list[Group] = []
    for uid in dict.fromkeys(decode):
        if uid:
            rows = [i for i, u in enumerate(decode) if u == uid]
            contiguous = rows[-1] - rows[0] + 1 == len(rows)
            groups.append(
                (uid, slice(rows[0], rows[-1] + 1) if contiguous else torch.tensor(rows, device=device))
            )
    start = len(decode)
    for uid, run in itertools.groupby(chunks):
        n = len(list(run))
        if uid:
            groups.append((uid, slice(start, start + n)))
        start += n
    return groups
