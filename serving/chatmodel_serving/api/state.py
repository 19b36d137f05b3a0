"""What the routes share: the served models (each with its engine) and the server's settings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ..engine.types import EngineClient, EngineStats
from ..models import LoadedModel
from .aliases import no_target, pick_target
from .metrics import ServingMetrics
from .protocol import ApiError, now
from .quota import Limits, Quotas
from .records import TrainingRecord


@dataclass
class ServedModel:
    name: str
    loaded: LoadedModel
    engine: EngineClient  # the in-process Engine, or the Triton client
    default_max_tokens: int = 512
    default_temperature: float = 0.7
    created: int = field(default_factory=now)
    training: TrainingRecord | None = None  # from its model folder; None: a plain model
    # A LoRA adapter served on a base model's engine (api/adapters.py): its name in the engine, the
    # folder it came from and the base's served name (`parent` in /v1/models). None: the model itself.
    adapter: str | None = None
    adapter_path: str | None = None
    parent: str | None = None

    @property
    def root(self) -> str:
        """Where the served weights came from (`root` in /v1/models)."""
        return self.adapter_path or self.loaded.source


@dataclass
class ServerState:
    models: dict[str, ServedModel]
    api_keys: list[str]
    log_prompts: bool = False
    ui: bool = True  # the playground page at /
    quotas: Quotas = field(default_factory=lambda: Quotas(Limits()))
    max_request_bytes: int = 1 << 20
    draining: bool = False
    lora_updates: bool = True  # POST /v1/load_lora_adapter and unload allowed (not --no-runtime-lora)
    lora_dir: str | None = None  # adapters served from this folder, on demand too (api/adapters.py)
    lora_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # adapter loads, one at a time
    # --adapters-file (api/adapter_table.py): the file, the adapters it loaded, those refused, its aliases.
    adapters_file: str | None = None
    table_adapters: set[str] = field(default_factory=set)
    adapter_errors: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, dict[str, int]] = field(default_factory=dict)
    metrics: ServingMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ServingMetrics(self.engine_stats)
        for name in self.models:  # exported at 0, so rate() sees the first refusal
            for kind in ("requests", "tokens"):
                self.metrics.rate_limited.labels(name, kind)

    def engine_stats(self) -> dict[str, EngineStats]:
        """Each engine's figures under its base model's name (an adapter shares its base's engine)."""
        return {n: m.engine.stats() for n, m in self.models.items() if m.adapter is None}

    def inflight(self) -> bool:
        return any(not m.engine.idle() for m in self.models.values())

    def pick_model(self, name: str) -> ServedModel:
        """The served model a request for `name` goes to: itself, or (an alias) one of its loaded targets
        at random by weight."""
        if name in self.aliases:
            target = pick_target(self.aliases[name], self.models)
            if target is None:
                raise no_target(name)
            name = target
        model = self.models.get(name)
        if model is None:
            raise ApiError(
                404,
                f"model {name!r} does not exist; see GET /v1/models",
                param="model",
                code="model_not_found",
            )
        return model


@dataclass(frozen=True)
class Caller:
    key: str  # the quota bucket
    headers: dict[str, str]  # x-ratelimit-* for the response
