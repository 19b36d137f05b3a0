"""--adapters-file: the adapters a server must serve and the model-name aliases in front of them, declared in
one JSON file and followed while the server runs. The operator writes it into a ConfigMap that the kubelet
projects into every pod of a shared LoRA Deployment, so a new version loads in the running pods, a retired
one unloads, a new or restarted pod comes up with every kept adapter (it loads the table before it reports
ready) and a canary's share moves by model name, all without a restart:

    {"adapters": {"bot-v2": "/artifacts/v2", "bot-v1": "/artifacts/v1"},
     "aliases": {"bot": {"bot-v1": 90, "bot-v2": 10}}}

A request for an alias goes to one of its targets at random by weight (targets not loaded are passed over);
the answer's `model` and the metrics name the target, as OpenAI names a snapshot for an alias. An adapter
the engine refuses is logged and reported in /ready's `adapter_errors`; the others serve."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .protocol import ApiError

if TYPE_CHECKING:  # the table is read (the command line checked) before torch is imported
    from .state import ServerState

log = logging.getLogger("chatmodel.adapters")
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class AdapterTable:
    adapters: dict[str, str] = field(default_factory=dict)  # served name -> adapter folder
    aliases: dict[str, dict[str, int]] = field(default_factory=dict)  # alias -> {served name: weight}


def parse_table(text: str) -> AdapterTable:
    """The table in `text`, or ValueError naming what is wrong."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) - {"adapters", "aliases"}:
        raise ValueError('give an object with "adapters" and "aliases" only')
    adapters, aliases = doc.get("adapters") or {}, doc.get("aliases") or {}
    if not isinstance(adapters, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in adapters.items()
    ):
        raise ValueError('"adapters": give {"NAME": "PATH", ...}')
    if not isinstance(aliases, dict):
        raise ValueError('"aliases": give {"ALIAS": {"NAME": WEIGHT, ...}, ...}')
    for alias, targets in aliases.items():
        ok = isinstance(targets, dict) and all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in targets.values()
        )
        if not ok:
            raise ValueError(f'"aliases.{alias}": give {{"NAME": WEIGHT, ...}} with whole weights >= 0')
        if alias in adapters:
            raise ValueError(f'"aliases.{alias}": also an adapter\'s name')
    return AdapterTable(dict(adapters), {a: dict(t) for a, t in aliases.items()})


def read_table(path: str) -> AdapterTable:
    try:
        return parse_table(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror}") from None


async def apply_table(state: ServerState, table: AdapterTable) -> None:
    """Load what the table adds or moves, unload what it dropped (of the adapters it loaded), set aliases."""
    from .adapters import load_adapter, unload_adapter

    async with state.lora_lock:
        for name in sorted(state.table_adapters):
            served = state.models.get(name)
            if name not in table.adapters or (served and served.adapter_path != table.adapters[name]):
                with contextlib.suppress(ApiError):  # unloaded through the route already
                    unload_adapter(state, name)
                state.table_adapters.discard(name)
                log.info("LoRA adapter unloaded", extra={"adapter": name})
        state.adapter_errors = {n: e for n, e in state.adapter_errors.items() if n in table.adapters}
        for name, path in table.adapters.items():
            if name in state.table_adapters:
                continue
            try:
                state.models[name] = await asyncio.to_thread(load_adapter, state, name, path)
            except ApiError as exc:
                if state.adapter_errors.get(name) != exc.message:
                    log.warning("LoRA adapter refused", extra={"adapter": name, "reason": exc.message})
                state.adapter_errors[name] = exc.message
                continue
            state.table_adapters.add(name)
            state.adapter_errors.pop(name, None)
            log.info("LoRA adapter loaded", extra={"adapter": name, "folder": path})
        state.aliases = table.aliases


async def follow_table(state: ServerState, path: str, poll: float = POLL_SECONDS) -> None:
    """Apply the file whenever its text changes (the kubelet swaps a ConfigMap volume's files atomically); a
    refused adapter is retried on the next change. An unreadable or invalid file keeps the last table."""
    seen: str | None = None
    while True:
        await asyncio.sleep(poll)
        try:
            text = await asyncio.to_thread(Path(path).read_text)
            if text == seen:
                continue
            seen = text
            await apply_table(state, parse_table(text))
        except (OSError, ValueError) as exc:
            log.warning("--adapters-file %s: %s; the last table stays", path, exc)


def table_report(state: ServerState) -> dict[str, Any]:
    """/ready's view of the table: what the operator counts to say a version is on every replica."""
    return {"aliases": state.aliases, "adapter_errors": state.adapter_errors}
