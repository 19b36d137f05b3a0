"""`make demo`: serve the built-in model, ask one question through the official openai client,
print the streamed answer and the measured speed, stop the server."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

QUESTION = "In two sentences, what is Kubernetes?"


def main() -> int:
    import openai

    from .launch import ServerProcess

    log = Path(tempfile.gettempdir()) / "chatmodel-demo-server.log"
    print("starting `chatmodel serve` on builtin://smollm2-135m (first run converts the model, ~30 s) ...")
    with ServerProcess(["--model", "builtin://smollm2-135m"], log_path=log) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="none")
        print(f"server ready at {srv.url}\n\nQ: {QUESTION}\nA: ", end="", flush=True)
        start = time.monotonic()
        first = None
        tokens = 0
        stream = client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=96,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.monotonic()
                print(chunk.choices[0].delta.content, end="", flush=True)
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        end = time.monotonic()
        ttft = (first or end) - start
        print(
            f"\n\n{tokens} tokens in {end - start:.2f} s: {tokens / (end - start):.1f} tokens/s, "
            f"time to first token {ttft:.2f} s (server log: {log})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
