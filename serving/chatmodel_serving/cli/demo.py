"""`make demo`: `chatmodel run manifests/samples/quickstart.yaml --with-base`, then questions.

Fine-tunes the built-in model on a fictional product's support FAQ (a few minutes on 2 CPU cores; a
later run reuses the result), serves the fine-tuned and the base model side by side, asks both the
same questions through the official openai client, and prints the answers next to each other with
the measured speed of one streamed answer."""

from __future__ import annotations

import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import PROJECT_ROOT

if TYPE_CHECKING:
    import openai

MANIFEST = PROJECT_ROOT / "manifests" / "samples" / "quickstart.yaml"
# Trained questions: the base model cannot know the answers (the product is made up).
QUESTIONS = [
    "What is the part number of the Tidewell H2 filter cartridge?",
    "What does error code E7 mean on the Tidewell H2?",
    "How long is the Tidewell H2 warranty?",
]


def stream_answer(client: openai.OpenAI, model: str, question: str) -> str:
    """Stream one answer to the terminal and report tokens/s and time to first token."""
    start, first, tokens, text = time.monotonic(), None, 0, []
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=64,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.monotonic()
            text.append(chunk.choices[0].delta.content)
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.monotonic()
    print(
        f"  ({model}: {tokens} tokens in {end - start:.2f} s, {tokens / (end - start):.1f} tokens/s, "
        f"time to first token {(first or end) - start:.2f} s)"
    )
    return "".join(text).strip()


def main() -> int:
    import openai

    from ..launch import ServerProcess
    from .run import fine_tune, plan, serve_args, serve_options

    manifest = Path(sys.argv[1]) if len(sys.argv) > 1 else MANIFEST
    print(f"== chatmodel run {manifest.name} --with-base\n")
    started = time.monotonic()
    p = plan(manifest)
    metrics = fine_tune(p)
    assert metrics is not None, f"{manifest} has no spec.fineTune"
    print(
        f"\nfine-tuned {p.base_source} -> {p.model_source} ({time.monotonic() - started:.0f} s): "
        f"eval loss {metrics['eval_loss_before']:.3f} -> {metrics['eval_loss']:.3f}, "
        f"{metrics['train_tokens_per_second']:.0f} train tokens/s"
    )
    from ..train.plots import report_lines

    for line in report_lines(Path(p.model_source), compare=True):
        print(line)
    opts = serve_options(p, "127.0.0.1", 0, with_base=True, api_keys_file=None)
    tuned, base = opts.served_model_names or []
    log = Path(tempfile.gettempdir()) / "chatmodel-demo-server.log"
    print(f"starting `chatmodel serve` with {tuned} and {base} ...")
    with ServerProcess(serve_args(opts), log_path=log) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="none")
        print(f"OpenAI endpoint {srv.url} (server log: {log})\n")
        answers = {q: {m: stream_answer(client, m, q) for m in (base, tuned)} for q in QUESTIONS}
    for question, by_model in answers.items():
        print(f"\nQ: {question}")
        for model, answer in by_model.items():
            label = "before (base)" if model == base else "after (fine-tuned)"
            print(textwrap.fill(answer, 100, initial_indent=f"  {label:>19}: ", subsequent_indent=" " * 23))
    return 0


if __name__ == "__main__":
    sys.exit(main())
