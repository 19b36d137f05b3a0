"""Per-API-key quotas: requests and tokens per minute over a sliding window, per server process.

A request is admitted while its key has used fewer requests than its `rpm` and fewer tokens than its `tpm`
in the last window; its tokens (prompt + completion) are counted when each answer finishes, so one large
request may overshoot the token limit once, and the next waits. Limits are per replica: a gateway in front
enforces global ones. Without API keys every caller shares one anonymous bucket.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .protocol import ApiError

ANONYMOUS = ""


@dataclass(frozen=True)
class Limits:
    rpm: int = 0  # 0 = unlimited
    tpm: int = 0

    @property
    def unlimited(self) -> bool:
        return not (self.rpm or self.tpm)


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def forget_before(self, t: float) -> None:
        while self.requests and self.requests[0] <= t:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= t:
            self.token_sum -= self.tokens.popleft()[1]


class Quotas:
    def __init__(self, default: Limits, per_key: dict[str, Limits] | None = None, window: float = 60.0):
        self.default, self.per_key, self.window = default, per_key or {}, window
        self._usage: dict[str, _Usage] = {}
        self._lock = threading.Lock()  # spend() runs on the event loop; tests may call from threads

    def limits(self, key: str) -> Limits:
        return self.per_key.get(key, self.default)

    def admit(self, key: str, model: str = "") -> dict[str, str]:
        """Count one request for `key`, or raise a 429 naming the limit. Returns the rate-limit headers."""
        lim = self.limits(key)
        if lim.unlimited:
            return {}
        now = time.monotonic()
        with self._lock:
            u = self._usage.setdefault(key, _Usage())
            u.forget_before(now - self.window)
            if lim.rpm and len(u.requests) >= lim.rpm:
                wait = u.requests[0] + self.window - now
                raise self._refusal("requests", lim.rpm, len(u.requests), wait, model, self._headers(lim, u))
            if lim.tpm and u.token_sum >= lim.tpm:
                wait, freed = 0.0, 0
                for t, n in u.tokens:  # until enough of the window's tokens expire
                    freed += n
                    wait = t + self.window - now
                    if u.token_sum - freed < lim.tpm:
                        break
                raise self._refusal("tokens", lim.tpm, u.token_sum, wait, model, self._headers(lim, u))
            u.requests.append(now)
            return self._headers(lim, u)

    def spend(self, key: str, tokens: int) -> None:
        """Count a finished answer's prompt + completion tokens."""
        if not self.limits(key).tpm or tokens <= 0:
            return
        with self._lock:
            u = self._usage.setdefault(key, _Usage())
            u.tokens.append((time.monotonic(), tokens))
            u.token_sum += tokens

    @staticmethod
    def _headers(lim: Limits, u: _Usage) -> dict[str, str]:
        h = {}
        if lim.rpm:
            h["x-ratelimit-limit-requests"] = str(lim.rpm)
            h["x-ratelimit-remaining-requests"] = str(max(0, lim.rpm - len(u.requests)))
        if lim.tpm:
            h["x-ratelimit-limit-tokens"] = str(lim.tpm)
            h["x-ratelimit-remaining-tokens"] = str(max(0, lim.tpm - u.token_sum))
        return h

    def _refusal(
        self, kind: str, limit: int, used: int, wait: float, model: str, headers: dict[str, str]
    ) -> ApiError:
        seconds = max(1, math.ceil(wait))
        per = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        where = f" for model {model}" if model else ""
        return ApiError(
            429,
            f"Rate limit reached{where} on {per}: Limit {limit}, Used {used}. "
            f"Please try again in {seconds}s.",
            kind,  # OpenAI's error type names the limit: "requests" or "tokens"
            code="rate_limit_exceeded",
            headers={**headers, "Retry-After": str(seconds)},
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
