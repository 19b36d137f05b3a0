"""Progress reporting: a tqdm bar on a terminal, one JSON object per line otherwise (pod logs are
read by machines: `kubectl logs job/... | jq`)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class Progress:
    def __init__(
        self, total_steps: int, initial_step: int = 0, json_lines: bool | None = None, quiet: bool = False
    ) -> None:
        self.quiet = quiet  # torchrun workers other than rank 0: one progress stream per run is enough
        self.total = total_steps
        self.initial = initial_step
        self.started = time.perf_counter()
        self.json_lines = not sys.stderr.isatty() if json_lines is None else json_lines
        self.out: TextIO = sys.stdout
        self.bar: Any = None
        if not self.json_lines and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def _emit(self, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        line = json.dumps(record)
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, file=self.out, flush=True)

    def eta_seconds(self, step: int) -> float | None:
        done = step - self.initial
        if done <= 0:
            return None
        return round((time.perf_counter() - self.started) / done * (self.total - step), 1)

    def step(self, step: int, epoch: float, loss: float, lr: float, tokens_per_second: float) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_second:.0f}", refresh=False)
            self.bar.update(step - self.bar.n)
            return
        self._emit(
            {
                "event": "step",
                "step": step,
                "total_steps": self.total,
                "epoch": round(epoch, 3),
                "loss": round(loss, 5),
                "learning_rate": lr,
                "tokens_per_second": round(tokens_per_second, 1),
                "eta_seconds": self.eta_seconds(step),
            }
        )

    def event(self, name: str, **fields: Any) -> None:
        self._emit({"event": name, **fields})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
