"""`chatmodel run` with a fine-tune to do: the base version answers at once, the fine-tune runs beside it,
and the fine-tuned version rolls in (as NAME and NAME-VERSION) when it passes spec.rollout.gate."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from chatmodel_serving.cli.run import plan
from chatmodel_serving.launch import ServerProcess

QUESTION = "What is the part number of the Tidewell H2 filter cartridge?"


def first_logprob(client: openai.OpenAI, model: str) -> tuple[str, float]:
    """The greedy first token and its logprob: equal for the same weights, moved by any training step.
    Asked twice, and the second answer kept: that one comes through the prefix cache whichever name asked
    first (a cached prefix and a full prefill differ in the last bits, in bfloat16)."""
    for _ in range(2):
        token, logprob = _first_logprob(client, model)
    return token, logprob


def _first_logprob(client: openai.OpenAI, model: str) -> tuple[str, float]:
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=1,
        temperature=0,
        logprobs=True,
    )
    assert r.choices[0].logprobs and r.choices[0].logprobs.content
    top = r.choices[0].logprobs.content[0]
    return top.token, top.logprob


@pytest.mark.slow
def test_base_answers_first_then_the_version_rolls_in(small_data: tuple[Path, Path], tmp_path: Path) -> None:
    train, val = small_data
    path = tmp_path / "bot.yaml"
    path.write_text(
        "apiVersion: chatmodel.dev/v1alpha1\nkind: ChatModel\nmetadata: {name: bot}\nspec:\n"
        "  baseModel: {source: builtin://smollm2-135m}\n"
        f"  fineTune:\n    dataset: {{source: {train}, validationSource: {val}}}\n    method: lora\n"
        # 16 steps: long enough that the base version answers before they are done.
        "    hyperparameters: {epochs: 2, learningRate: 1.0e-3, batchSize: 1, maxSeqLength: 96}\n"
        "  rollout: {gate: {requireImprovement: true}}\n"
    )
    work = tmp_path / "artifacts"
    recipe = plan(path, work).train
    assert recipe is not None
    output = recipe.output
    log = tmp_path / "run.log"
    args = [str(path), "--with-base", "--work-dir", str(work)]
    with ServerProcess(args, subcommand="run", log_path=log) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        base = first_logprob(client, "bot")
        answered = time.time()
        assert first_logprob(client, "bot-base") == base  # NAME is the base version for now
        deadline = time.monotonic() + 600
        tuned_name = f"bot-{output.name}"
        while tuned_name not in {m.id for m in client.models.list()}:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            assert "refused by spec.rollout.gate" not in log.read_text()
            time.sleep(1)
        # The base version answered before the fine-tune had published its model.
        assert answered < (output / "metrics.json").stat().st_mtime
        tuned = first_logprob(client, tuned_name)
        assert first_logprob(client, "bot") == tuned  # NAME now serves the fine-tuned version
        assert tuned != base and first_logprob(client, "bot-base") == base
    text = log.read_text()
    assert f"bot: version {output.name} rolled in" in text
    assert (output / "gate.json").is_file()
