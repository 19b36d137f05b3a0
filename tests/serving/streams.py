"""A long streamed answer for drain tests (both runtimes): it waits at `started` after its first chunk, so a
test can signal the server while every stream is in flight."""

from __future__ import annotations

import threading

import openai

MODEL = "smollm2-135m"


def stream_story(
    client: openai.OpenAI, i: int, started: threading.Barrier, results: list[tuple[str, str | None]]
) -> None:
    parts: list[str] = []
    reason, seen = None, False
    for c in client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Tell a long story, part {i}."}],
        max_tokens=48,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    ):
        if c.choices:
            parts.append(c.choices[0].delta.content or "")
            reason = c.choices[0].finish_reason or reason
            if not seen:
                seen = True
                started.wait()
    results.append(("".join(parts), reason))
