"""Data validation (every bad line named, nothing written), prompt masking, the seeded split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from chatmodel_serving.cli import main
from chatmodel_serving.train.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    load_examples,
    parse_record,
    split_examples,
    tokenize_examples,
)
from tests.serving.train.conftest import DEMO_DATA

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

GOOD = json.dumps({"input": "What is the Tidewell H2?", "output": "A water purifier."}).encode()
# kind -> (bad line, words the error must contain)
BAD_LINES: dict[str, tuple[bytes, str]] = {
    "invalid-json": (b'{"input": "hi", "output": ', "invalid JSON"),
    "missing-field": (json.dumps({"input": "hi"}).encode(), "missing field 'output'"),
    "wrong-type": (json.dumps({"input": "hi", "output": 42}).encode(), "must be a string, not int"),
    "empty-text": (json.dumps({"input": "hi", "output": "  "}).encode(), "is empty"),
    "non-utf8": (b'{"input": "caf\xe9", "output": "ok"}', "not valid UTF-8"),
    "not-an-object": (b'["input", "output"]', "expected a JSON object"),
    "bad-role": (json.dumps({"messages": [{"role": "bot", "content": "x"}]}).encode(), "role must be one of"),
    "no-assistant": (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "no assistant"),
}


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_line_is_named_and_nothing_is_written(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, words = BAD_LINES[kind]
    data = write(tmp_path / "data.jsonl", [GOOD, GOOD, bad, GOOD])
    out, term = tmp_path / "out", tmp_path / "termination-log"
    rc = main(["train", "--data", str(data), "--output", str(out), "--termination-message-path", str(term)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "line 3:" in err and words in err, err
    assert "line 1:" not in err and "line 4:" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == sorted(["data.jsonl", "termination-log"])  # no staging
    assert term.read_text().startswith("error:") and "line 3" in term.read_text()


def test_every_bad_line_is_reported(tmp_path: Path) -> None:
    lines = [GOOD] + [bad for bad, _ in BAD_LINES.values()] + [b"", GOOD]
    with pytest.raises(DataError) as info:
        load_examples(write(tmp_path / "d.jsonl", lines))
    assert [n for n, _ in info.value.problems] == list(range(2, 2 + len(BAD_LINES)))
    assert f"{len(BAD_LINES)} bad lines" in str(info.value)


def test_empty_file_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        load_examples(write(tmp_path / "d.jsonl", [b"", b"  "]))
    with pytest.raises(DataError, match="cannot read"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="only readable inside the cluster"):
        load_examples("pvc://claim/data.jsonl")


def test_both_forms_and_system_prompt(tmp_path: Path) -> None:
    assert parse_record({"input": "q", "output": "a", "system": "be brief"})[0] == {
        "role": "system",
        "content": "be brief",
    }
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    data = write(tmp_path / "d.jsonl", [json.dumps(chat).encode(), GOOD])
    examples = load_examples(data, system_prompt="You are Tidewell's support bot.")
    assert all(e.messages[0]["role"] == "system" for e in examples)
    assert load_examples("builtin://tidewell-faq")[0].line == 1


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    from chatmodel_serving.models import resolve_source

    return AutoTokenizer.from_pretrained(resolve_source("builtin://smollm2-135m"))


def test_loss_covers_only_the_answers(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = (
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Second question?"},
        {"role": "assistant", "content": "Second answer."},
    )
    [item], stats = tokenize_examples([Example(messages, 1)], tokenizer, 512)
    learned = tokenizer.decode(
        [t for t, label in zip(item.input_ids, item.labels, strict=True) if label != -100]
    )
    assert isinstance(learned, str)  # one sequence decodes to one string
    assert learned.replace("\n", "") == "First answer.<|im_end|>Second answer.<|im_end|>"
    assert stats.truncated == 0 and stats.answer_tokens == sum(1 for x in item.labels if x != IGNORE_INDEX)


def test_truncation_is_counted_not_silent(
    tokenizer: PreTrainedTokenizerBase, caplog: pytest.LogCaptureFixture
) -> None:
    examples = load_examples(DEMO_DATA)[:4]
    items, stats = tokenize_examples(examples, tokenizer, 40)
    assert stats.truncated == 4 and all(len(i) == 40 for i in items)
    assert "4 of 4 training examples were longer than max_seq_length=40" in caplog.text
    with pytest.raises(ValueError, match="no training example fits"):
        tokenize_examples(examples, tokenizer, 8)  # the prompt alone is longer: nothing to learn


def test_split_is_seeded_and_deterministic() -> None:
    examples = load_examples(DEMO_DATA)
    train_a, val_a = split_examples(examples, 0.1, seed=7)
    train_b, val_b = split_examples(examples, 0.1, seed=7)
    _, val_c = split_examples(examples, 0.1, seed=8)
    assert val_a == val_b and train_a == train_b and val_a != val_c
    assert len(val_a) == round(len(examples) * 0.1) and len(train_a) + len(val_a) == len(examples)
