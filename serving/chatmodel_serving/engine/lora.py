"""Batched multi-LoRA: one base model in memory serves many PEFT LoRA adapters at once, never merged.

Each linear layer an adapter targets is wrapped once by LoraLinear: the base layer's output plus, for the
tokens of rows that use an adapter, `(x @ A^T) @ B^T` (the scale folded into B). Two forms, by what is
cheap where (measured on CPU, bfloat16, 576-wide layers):
- decode tokens (one per running row, few): the A matrices of every resident adapter side by side and the
  B matrices likewise (`Stacked`, rebuilt when residency changes, packed for oneDNN like the base layers), so
  one step's delta is two small matmuls whatever the mix of adapters, with each row's columns of the other
  adapters masked to zero. A loop over adapters with gathered rows cost 3-4x more per layer (per-op overhead).
- prefill chunks (many tokens per row): the engine orders them by adapter, so each adapter's tokens are one
  slice and get their own pair of matmuls of their own rank (no work for the other adapters' columns).
Rows without an adapter get exactly zero added: bit for bit what the base layer alone gives.

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

from . import linears
from .types import AdapterError, UnknownAdapterError

WEIGHT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class Adapter:
    name: str
    path: str
    uid: int  # unique per load: a reloaded name is a new adapter (its prefix-cache entries are not reused)
    rank: int
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A [r, in], scaled B [out, r]), CPU


# Sibling layers that read the same input (Llama, Mistral, Qwen, Gemma, ... name them so): their decode
# deltas are computed together, one down and one (block-diagonal) up matmul for the group. Only speed
# depends on this list: a member called with another input computes the group afresh.
SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class SharedInput:
    """The decode deltas of sibling layers that read one input, computed at the first member's call."""

    def __init__(self, step: StepAdapters):
        self.step = step
        self.members: list[LoraLinear] = []
        self.down: torch.nn.Module | None = None  # x -> every member's A columns, side by side
        self.up: torch.nn.Module | None = None  # -> every member's delta, side by side (block diagonal)
        self.outputs: dict[int, slice] = {}  # id(member) -> its columns of the delta
        self._input: torch.Tensor | None = None
        self._delta: torch.Tensor | None = None

    def delta(self, member: LoraLinear, x: torch.Tensor, flat_x: torch.Tensor) -> torch.Tensor:
        """`member`'s delta for the decode rows of its input x (the first step.decode_mask.shape[0] tokens
        of flat_x, x as [tokens, features])."""
        assert self.down is not None and self.up is not None and self.step.decode_mask is not None
        if self._input is not x or self._delta is None:  # the same tensor object: the same input
            mask = self.step.decode_mask
            xa = self.down(flat_x[: mask.shape[0]])
            xa.mul_(mask.repeat(1, len(self.members)) if len(self.members) > 1 else mask)
            self._input, self._delta = x, self.up(xa)
        return self._delta[:, self.outputs[id(member)]]

    def forget(self) -> None:
        self._input = self._delta = None


class LoraLinear(torch.nn.Module):
    """A base linear layer plus the deltas of the adapters resident on it (module docstring)."""

    def __init__(self, base: torch.nn.Module, step: StepAdapters):
        super().__init__()
        self.base = base
        self.step = step
        self.resident: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # uid -> (A, B) on the device
        self.group = SharedInput(step)  # replaced by the siblings' shared one when it has some

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        step = self.step
        if not self.resident:
            return y
        flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.view(-1, y.shape[-1])
        if step.decode_mask is not None and self.group.down is not None:
            flat_y[: step.decode_mask.shape[0]] += self.group.delta(self, x, flat_x)
        for uid, rows in step.chunks:
            ab = self.resident.get(uid)
            if ab is not None:  # None: this adapter leaves this layer alone
                a, b = ab
                flat_y[rows] += (flat_x[rows] @ a.T) @ b.T
        return y


class StepAdapters:
    """What the step being computed asks of the LoRA layers (set by the engine around each forward): for
    its first n tokens (the decode rows), an [n, columns] mask that keeps each row's own adapter's columns
    of the stacked matrices (None: no decode row uses an adapter); for its prefill tokens, a slice per
    adapter."""

    def __init__(self) -> None:
        self.decode_mask: torch.Tensor | None = None
        self.chunks: list[tuple[int, slice]] = []
        self.groups: list[SharedInput] = []  # to forget their inputs after the step

    def clear(self) -> None:
        self.decode_mask, self.chunks = None, []
        for g in self.groups:
            g.forget()


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
        self._wrapped: dict[str, LoraLinear] = {}
        self._owner = torch.zeros(0, dtype=torch.long, device=self.device)  # the adapter uid of each column
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
        self._restack()

    def drop_unloaded(self, pinned: set[int]) -> None:
        """Free the slots of adapters unloaded since (once no running row needs them)."""
        with self._lock:
            live = {a.uid for a in self.loaded.values()}
        gone = [u for u in self.resident if u not in live and u not in pinned]
        for uid in gone:
            self._evict(uid)
        if gone:
            self._restack()

    def decode_mask(self, uids: list[int]) -> torch.Tensor | None:
        """The step's decode mask (StepAdapters) for decode rows using these adapters (0 = the base)."""
        if not any(uids):
            return None
        rows = torch.tensor(uids, device=self.device)
        return (rows[:, None] == self._owner[None, :]).to(self.dtype)

    def _evict(self, uid: int) -> None:
        for layer in self._wrapped.values():
            layer.resident.pop(uid, None)
        del self.resident[uid]

    def _restack(self) -> None:
        """Lay the resident adapters side by side: each owns `rank` columns, in residency order, in every
        wrapped layer (zeros where it leaves a layer alone), so one mask serves every layer; then stack the
        layers of each shared-input group (SHARED_INPUT)."""
        blocks = [(uid, a.rank) for uid, a in self.resident.items()]
        self._owner = torch.tensor([uid for uid, r in blocks for _ in range(r)], device=self.device)
        groups: dict[str, SharedInput] = {}
        named: dict[str, list[str]] = {}
        for name, layer in self._wrapped.items():
            groups.setdefault(_group_key(name), SharedInput(self.step)).members.append(layer)
            named.setdefault(_group_key(name), []).append(name)
            layer.group = groups[_group_key(name)]
        self.step.groups = list(groups.values())
        if not blocks:  # nothing resident: every group without weights (LoraLinear then adds nothing)
            return
        for key, group in groups.items():
            downs, ups = [], []
            start = 0
            for layer, name in zip(group.members, named[key], strict=True):
                a, b = self._side_by_side(layer, self.shapes[name], blocks)
                downs.append(a)
                ups.append(b)
                group.outputs[id(layer)] = slice(start, start + b.shape[0])
                start += b.shape[0]
            down, up = torch.cat(downs), _block_diagonal(ups)
            group.down = linears.packed_if_possible(_linear(down))
            group.up = linears.packed_if_possible(_linear(up))

    def _side_by_side(
        self, layer: LoraLinear, shape: tuple[int, int], blocks: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A's stacked [columns, in], B's side by side [out, columns]) of the resident adapters."""
        a_parts, b_parts = [], []
        for uid, rank in blocks:
            a, b = layer.resident.get(uid) or self._zeros(shape, rank)
            pad = rank - a.shape[0]  # an adapter of lower rank in this layer (rank_pattern)
            a_parts.append(torch.nn.functional.pad(a, (0, 0, 0, pad)))
            b_parts.append(torch.nn.functional.pad(b, (0, pad)))
        return torch.cat(a_parts), torch.cat(b_parts, dim=1)

    def _zeros(self, shape: tuple[int, int], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        fan_in, fan_out = shape
        z = torch.zeros((rank, fan_in), dtype=self.dtype, device=self.device)
        return z, torch.zeros((fan_out, rank), dtype=self.dtype, device=self.device)

    def _wrap(self, module: str) -> LoraLinear:
        parent_name, _, child = module.rpartition(".")
        parent = self.model.get_submodule(parent_name)
        layer = LoraLinear(getattr(parent, child), self.step)
        setattr(parent, child, layer)
        self._wrapped[module] = layer
        return layer


def _group_key(module: str) -> str:
    """Layers with the same key read the same input (SHARED_INPUT); others are alone."""
    parent, _, child = module.rpartition(".")
    for i, siblings in enumerate(SHARED_INPUT):
        if child in siblings:
            return f"{parent}#{i}"
    return module


def _block_diagonal(parts: list[torch.Tensor]) -> torch.Tensor:
    """torch.block_diag's result: each [out_i, cols_i] part on the diagonal, zeros elsewhere."""
    out = parts[0].new_zeros(sum(p.shape[0] for p in parts), sum(p.shape[1] for p in parts))
    row = col = 0
    for p in parts:
        out[row : row + p.shape[0], col : col + p.shape[1]] = p
        row, col = row + p.shape[0], col + p.shape[1]
    return out


def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    """A bias-free linear layer holding `weight` [out, in]."""
    out_features, in_features = weight.shape
    layer = torch.nn.Linear(in_features, out_features, bias=False, device=weight.device, dtype=weight.dtype)
    layer.weight.data = weight
    return layer


def chunk_groups(uids: list[int], start: int) -> list[tuple[int, slice]]:
    """Per adapter, the slice of the step's prefill tokens (from `start`, ordered by uid) that use it."""
    out = []
    for uid, run in itertools.groupby(uids):
        n = len(list(run))
        if uid:
            out.append((uid, slice(start, start + n)))
        start += n
    return out
