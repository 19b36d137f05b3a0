"""Per-API-key quotas: requests and tokens per minute over a moving window, kept by the `limits` library.

A request is admitted while its key has used fewer requests than its `rpm` and fewer tokens than its `tpm`
in the last window; its tokens (prompt + completion) are counted when each answer finishes, so one large
request may fill the token window at once, and the next waits. The storage decides the scope:
`memory://` (the default) counts per process, which is what each serving replica does as a second line;
`redis://HOST:PORT` (or `rediss://`, `redis+sentinel://`) counts once for every process that shares the
store, which is how `chatmodel gateway` replicas enforce one global limit per key.

When the store does not answer, `fail_open` decides: True admits under a per-process window instead (the
limit then holds per replica), False refuses with a 429 and Retry-After. Neither answers a 5xx.
Without API keys every caller shares one anonymous bucket.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from .protocol import ApiError

ANONYMOUS = ""
STORE_RETRY_SECONDS = 5  # what a fail-closed refusal tells the client while the store is away
log = logging.getLogger("chatmodel.quota")


@dataclass(frozen=True)
class Limits:
    rpm: int = 0  # 0 = unlimited
    tpm: int = 0

    @property
    def unlimited(self) -> bool:
        return not (self.rpm or self.tpm)


REDIS_SCHEMES = ("redis://", "rediss://", "redis+sentinel://", "redis+cluster://")
STORE_SCHEMES = ("memory://", *REDIS_SCHEMES)


def open_storage(uri: str) -> Storage:
    """`memory://` or a Redis URI, as the async storage `limits` keeps its windows in (redis-py client)."""
    redis = uri.startswith(REDIS_SCHEMES)
    options: dict[str, str | bool] = {"implementation": "redispy", "wrap_exceptions": True} if redis else {}
    store = storage_from_string(f"async+{uri}", **options)
    if not isinstance(store, Storage):
        raise ValueError(f"{uri}: not a storage for asynchronous limits")
    return store


class Quotas:
    def __init__(
        self,
        default: Limits,
        per_key: dict[str, Limits] | None = None,
        window: float = 60.0,
        storage: str = "memory://",
        fail_open: bool = True,
    ) -> None:
        self.default, self.per_key = default, per_key or {}
        self.seconds = max(1, math.ceil(window))  # limits' windows are whole seconds
        self.store, self.fail_open = storage, fail_open
        self._shared = MovingWindowRateLimiter(open_storage(storage))
        self._local = MovingWindowRateLimiter(open_storage("memory://"))  # the fail-open fallback

    def limits(self, key: str) -> Limits:
        return self.per_key.get(key, self.default)

    def _item(self, amount: int) -> RateLimitItem:
        return RateLimitItemPerSecond(amount, self.seconds)

    async def admit(self, key: str, model: str = "") -> dict[str, str]:
        """Count one request for `key`, or raise a 429 naming the limit. Returns the rate-limit headers."""
        lim = self.limits(key)
        if lim.unlimited:
            return {}
        try:
            return await self._admit(self._shared, key, lim, model)
        except StorageError as exc:
            self._store_down(exc, model)
            return await self._admit(self._local, key, lim, model)

    async def _admit(
        self, limiter: MovingWindowRateLimiter, key: str, lim: Limits, model: str
    ) -> dict[str, str]:
        if lim.tpm and not await limiter.test(self._item(lim.tpm), "tpm", key):
            raise await self._refusal(limiter, key, lim, "tokens", model)
        if lim.rpm and not await limiter.hit(self._item(lim.rpm), "rpm", key):
            raise await self._refusal(limiter, key, lim, "requests", model)
        return await self._headers(limiter, key, lim)

    async def spend(self, key: str, tokens: int) -> None:
        """Count a finished answer's prompt + completion tokens (what is left of the window at most)."""
        lim = self.limits(key)
        if not lim.tpm or tokens <= 0:
            return
        try:
            await self._spend(self._shared, key, lim.tpm, tokens)
        except StorageError as exc:
            if self.fail_open:
                log.warning("quota store %s: %s; tokens counted in this process", self.store, exc)
                await self._spend(self._local, key, lim.tpm, tokens)

    async def _spend(self, limiter: MovingWindowRateLimiter, key: str, tpm: int, tokens: int) -> None:
        item = self._item(tpm)
        left = (await limiter.get_window_stats(item, "tpm", key)).remaining
        if left > 0:
            await limiter.hit(item, "tpm", key, cost=min(tokens, left))

    def _store_down(self, exc: Exception, model: str) -> None:
        """Fail open (log; the caller goes on with this process's window) or closed (a 429)."""
        if self.fail_open:
            log.warning("quota store %s: %s; this process's own window decides", self.store, exc)
            return
        raise ApiError(
            429,
            f"Rate limit store unavailable{f' for model {model}' if model else ''}; "
            f"please try again in {STORE_RETRY_SECONDS}s.",
            "requests",
            code="rate_limit_store_unavailable",
            headers={"Retry-After": str(STORE_RETRY_SECONDS)},
        ) from None

    async def _headers(self, limiter: MovingWindowRateLimiter, key: str, lim: Limits) -> dict[str, str]:
        h = {}
        for kind, limit in (("requests", lim.rpm), ("tokens", lim.tpm)):
            if limit:
                stats = await limiter.get_window_stats(self._item(limit), kind[:1] + "pm", key)
                h[f"x-ratelimit-limit-{kind}"] = str(limit)
                h[f"x-ratelimit-remaining-{kind}"] = str(max(0, stats.remaining))
        return h

    async def _refusal(
        self, limiter: MovingWindowRateLimiter, key: str, lim: Limits, kind: str, model: str
    ) -> ApiError:
        limit = lim.rpm if kind == "requests" else lim.tpm
        stats = await limiter.get_window_stats(self._item(limit), kind[:1] + "pm", key)
        seconds = max(1, math.ceil(stats.reset_time - time.time()))
        per = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        where = f" for model {model}" if model else ""
        headers = {**await self._headers(limiter, key, lim), "Retry-After": str(seconds)}
        return ApiError(
            429,
            f"Rate limit reached{where} on {per}: Limit {limit}, Used {limit - stats.remaining}. "
            f"Please try again in {seconds}s.",
            kind,  # OpenAI's error type names the limit: "requests" or "tokens"
            code="rate_limit_exceeded",
            headers=headers,
        )


def parse_key_line(line: str, lineno: int) -> tuple[str, Limits | None]:
    """`KEY [rpm=N] [tpm=N]` -> (key, its own limits or None). A plain one-key line stays valid."""
    key, *words = line.split()
    if not words:
        return key, None
    values = {}
    for w in words:
        name, sep, value = w.partition("=")
        if not sep or name not in ("rpm", "tpm") or not value.isdigit():
            raise ValueError(f"line {lineno}: {w!r} is not rpm=N or tpm=N (N a whole number)")
        values[name] = int(value)
    return key, Limits(**values)
