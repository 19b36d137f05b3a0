"""Eight LoRA adapters of one tiny random base, each trained by our trainer on its own tiny data set (the
same questions, a different made-up answer per adapter), so their greedy answers differ from each other
and from the base's. Shared by the engine and API tests of multi-LoRA serving."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatmodel_serving.engine.types import Event, SamplingParams
from chatmodel_serving.train.config import TrainConfig
from chatmodel_serving.train.trainer import train

if TYPE_CHECKING:
    from chatmodel_serving.engine.core import Engine

QUESTIONS = [
    "How do I reset the Tidewell H2?",
    "What does error E7 mean?",
    "How often should I change the filter?",
    "Is the warranty transferable?",
]
MAX_TOKENS = 16
Job = tuple[list[int], str | None]  # prompt ids, adapter (None: the base)
WORDS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor"]


def write_data(folder: Path, word: str) -> Path:
    lines = [{"input": q, "output": f"{word.title()} {word} {word}: the {word} answer."} for q in QUESTIONS]
    path = folder / f"{word}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def train_adapter(base: Path, folder: Path, word: str, rank: int = 8, targets: str = "all-linear") -> Path:
    """Our trainer's LoRA run (float32, CPU): the adapter folder it publishes."""
    config = TrainConfig(
        base_model=str(base),
        data=str(write_data(folder, word)),
        output=folder / f"adapter-{word}",
        method="lora",
        epochs=4,
        learning_rate=2e-2,
        batch_size=4,
        max_seq_length=64,
        compute_dtype="float32",
        device="cpu",
        save_steps=0,
        lora_r=rank,
        lora_alpha=2 * rank,
        lora_target_modules=targets,
        termination_message_path=None,
    )
    return train(config, json_lines=False).output


def chat_ids(tokenizer: Any, question: str) -> list[int]:
    out = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    return list(out if isinstance(out, list) else out["input_ids"])


def answers(engine: Engine, jobs: list[Job], alone: bool = False) -> list[str]:
    """Greedy answers to every job: submitted all at once (one batch), or one at a time."""
    texts = [""] * len(jobs)
    done = [threading.Event() for _ in jobs]

    def submit(i: int) -> None:
        prompt, adapter = jobs[i]

        def sink(ev: Event) -> None:
            texts[i] += ev.text
            if ev.finish_reason:
                assert ev.finish_reason in ("stop", "length"), ev
                done[i].set()

        engine.submit(prompt, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, adapter=adapter), sink)

    for i in range(len(jobs)):
        submit(i)
        if alone:
            assert done[i].wait(120)
    for d in done:
        assert d.wait(120)
    return texts
