"""`make demo`: `chatmodel run manifests/samples/quickstart.yaml --with-base`, then questions.

The base version answers at once while the built-in model fine-tunes beside it on a fictional product's
support FAQ (a few minutes on 2 CPU cores; a later run reuses the result); when the fine-tuned version
passes its gate it rolls in, and the demo asks the base and the fine-tuned version the same questions
through the official openai client and prints the answers next to each other, with the measured speed of
each streamed answer and how long after the start each version first answered."""

from __future__ import annotations

import json
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


def training_progress(log: Path) -> str:
    """The fine-tune's last step, from the JSON lines it writes to the server's log."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith('{"event": "step"'):
            step = json.loads(line)
            return f"step {step['step']}/{step['total_steps']}, loss {step['loss']:.3f}"
    return "starting"


def wait_for_version(client: openai.OpenAI, name: str, log: Path, started: float) -> bool:
    """Until `name` is served (True), or the server says the version will not be (False)."""
    said = 0.0
    while True:
        if any(m.id == name for m in client.models.list()):
            return True
        text = log.read_text(errors="replace")
        if "refused by spec.rollout.gate" in text or "the fine-tune of version" in text:
            return False
        if time.monotonic() - said >= 20:
            said = time.monotonic()
            print(f"  ... {said - started:4.0f} s: fine-tuning ({training_progress(log)})", flush=True)
        time.sleep(2)


def main() -> int:
    import openai

    from ..launch import ServerProcess
    from .run import plan, trained_before

    manifest = Path(sys.argv[1]) if len(sys.argv) > 1 else MANIFEST
    print(f"== chatmodel run {manifest.name} --with-base\n")
    started = time.monotonic()
    p = plan(manifest)
    if p.train is None:
        raise SystemExit(f"{manifest} has no spec.fineTune")
    version, base = p.train.output.name, f"{p.name}-base"
    reused = trained_before(p) is not None
    log = Path(tempfile.gettempdir()) / "chatmodel-demo-server.log"
    timings = []
    with ServerProcess(
        [str(manifest), "--with-base"], subcommand="run", log_path=log, ready_timeout=600
    ) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="none")
        print(f"OpenAI endpoint {srv.url} (server log: {log})")
        if not reused:
            print(f"{p.name} answers with its base version while version {version} fine-tunes beside it:")
            print(f"\nQ: {QUESTIONS[0]}")
            print(f"  {stream_answer(client, p.name, QUESTIONS[0])}")
            timings.append(f"first answer (base version) {time.monotonic() - started:.0f} s after start")
            print(f"\n{timings[-1]}; waiting for version {version} to pass its gate ...")
            if not wait_for_version(client, f"{p.name}-{version}", log, started):
                print(f"version {version} does not serve; the server log says why: {log}")
                return 1
            timings.append(
                f"fine-tuned version {version} serving {time.monotonic() - started:.0f} s after start"
            )
            print(f"{timings[-1]}\n")
        from ..train.plots import report_lines

        for line in report_lines(Path(p.model_source), compare=True):
            print(line)
        answers = {q: {m: stream_answer(client, m, q) for m in (base, p.name)} for q in QUESTIONS}
    for question, by_model in answers.items():
        print(f"\nQ: {question}")
        for model, answer in by_model.items():
            label = "before (base)" if model == base else "after (fine-tuned)"
            print(textwrap.fill(answer, 100, initial_indent=f"  {label:>19}: ", subsequent_indent=" " * 23))
    for line in timings:
        print(f"demo timing: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
