"""LoRA adapters served beside their base model, loaded and unloaded while the server runs, with vLLM's
routes and request shapes: POST /v1/load_lora_adapter {"lora_name", "lora_path"} and POST
/v1/unload_lora_adapter {"lora_name"}, answered with vLLM's plain-text success line. Both sit under /v1, so
RequestGate checks the API key as for every other route; a server started with --no-runtime-lora refuses
both (vLLM asks for VLLM_ALLOW_RUNTIME_LORA_UPDATING instead). An adapter is then one more served
model: its name in `model`, `parent` = the base in /v1/models, its own series in the metrics, answered by
the base's engine in the same batches as the base (engine/lora.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import time
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ..engine.types import AdapterError, UnknownAdapterError
from .protocol import ApiError, now
from .state import ServedModel, ServerState

LOAD_ROUTE, UNLOAD_ROUTE = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")  # a model name that can only be a child folder


class LoadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=256)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False  # vLLM's: replace an adapter of that name instead of refusing
    base_model_name: str | None = None  # ours: which served base, when there are several


class UnloadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=256)
    lora_int_id: int | None = None  # vLLM's; ignored (names are unique here)


def bases(state: ServerState) -> list[ServedModel]:
    """The served models adapters can go on: those that are not adapters themselves."""
    return [m for m in state.models.values() if m.adapter is None]


def pick_base(state: ServerState, name: str, path: str, wanted: str | None) -> ServedModel:
    """The base model an adapter is loaded on: the one asked for, the only one, or the one whose source the
    adapter's config names."""
    candidates = bases(state)
    if wanted is not None:
        chosen = [m for m in candidates if m.name == wanted]
        if not chosen:
            raise ApiError(404, f"base model {wanted!r} is not served here", param="base_model_name")
        return chosen[0]
    if len(candidates) == 1:
        return candidates[0]
    try:
        config = json.loads((Path(path) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    named = [m for m in candidates if m.loaded.source == config.get("base_model_name_or_path")]
    if len(named) == 1:
        return named[0]
    names = ", ".join(m.name for m in candidates)
    raise ApiError(
        400, f"several base models are served ({names}); name one in base_model_name", param="lora_name"
    )


def load_adapter(state: ServerState, name: str, path: str, base_name: str | None = None) -> ServedModel:
    """Load an adapter on its base's engine (blocking: file I/O) and return it as a served model, for the
    caller to add to state.models (ApiError 400 naming it if it cannot be served)."""
    if name in state.models:
        kind = "adapter" if state.models[name].adapter else "model"
        raise ApiError(
            400, f"LoRA adapter {name!r}: a {kind} of that name is already served", param="lora_name"
        )
    base = pick_base(state, name, path, base_name)
    start = time.monotonic()
    try:
        base.engine.load_adapter(name, path)
    except AdapterError as exc:
        state.metrics.lora_loads.labels(base.name, "refused").inc()
        raise ApiError(400, str(exc), param="lora_path", code="invalid_lora_adapter") from None
    state.metrics.lora_loads.labels(base.name, "loaded").inc()
    state.metrics.lora_load_seconds.labels(base.name).observe(time.monotonic() - start)
    return dataclasses.replace(
        base, name=name, adapter=name, adapter_path=path, parent=base.name, created=now(), training=None
    )


def unload_adapter(state: ServerState, name: str) -> None:
    served = state.models.get(name)
    if served is None or served.adapter is None:
        raise ApiError(404, f"the LoRA adapter {name!r} cannot be found", param="lora_name", code="not_found")
    del state.models[name]  # new requests are refused from now on; running ones finish with it
    with contextlib.suppress(UnknownAdapterError):  # already gone from the engine
        served.engine.unload_adapter(served.adapter)


async def ensure_served(state: ServerState, name: str) -> None:
    """--lora-dir, on demand (vLLM's LoRA resolver): a model name not served yet whose folder in the directory
    holds an adapter is loaded now, so a version written there after start serves without a restart; an
    adapter that came from the directory and whose folder has gone since is unloaded (the request then
    gets the usual 404)."""
    if not state.lora_dir or not state.lora_updates:
        return
    root = Path(state.lora_dir).expanduser()
    served = state.models.get(name)
    if served is not None:
        path = Path(served.adapter_path or "")
        if served.adapter and path.parent == root and not (path / "adapter_config.json").is_file():
            unload_adapter(state, name)
        return
    folder = root / name
    if not FOLDER_NAME.fullmatch(name) or not (folder / "adapter_config.json").is_file():
        return
    async with state.lora_lock:  # one load per name, however many requests ask for it at once
        if name not in state.models:
            state.models[name] = await asyncio.to_thread(load_adapter, state, name, str(folder))


def add_adapter_routes(app: FastAPI, state: ServerState) -> None:
    def allowed() -> None:
        if not state.lora_updates:
            message = "loading LoRA adapters at run time is off on this server (--no-runtime-lora)"
            raise ApiError(403, message, "permission_error", code="lora_updates_disabled")

    @app.post(LOAD_ROUTE, response_class=PlainTextResponse, summary="Load a LoRA adapter (vLLM's route)")
    async def load(req: LoadLoraAdapterRequest) -> PlainTextResponse:
        allowed()
        async with state.lora_lock:
            if req.load_inplace and req.lora_name in state.models and state.models[req.lora_name].adapter:
                unload_adapter(state, req.lora_name)
            args = (state, req.lora_name, req.lora_path, req.base_model_name)
            served = await asyncio.to_thread(load_adapter, *args)
            state.models[served.name] = served  # on the event loop: the routes read state.models there
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post(UNLOAD_ROUTE, response_class=PlainTextResponse, summary="Unload a LoRA adapter (vLLM's route)")
    async def unload(req: UnloadLoraAdapterRequest) -> PlainTextResponse:
        allowed()
        unload_adapter(state, req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")
