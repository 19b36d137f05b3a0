"""Bad command lines and bad input, as a user meets them: the real `chatmodel` in a subprocess prints one
line per problem on stderr (naming the option, the file and line, or the field), no traceback and no
library URL, and exits 2 for bad input, 1 for a failure while running, 130 on Ctrl-C; `--debug` (or
CHATMODEL_DEBUG=1) adds the traceback. Every case fails before a model loads (and, but for `train`, before
torch is imported)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatmodel_serving.cli import describe, field_path
from tests.tools import ROOT

QUICKSTART = ROOT / "manifests" / "samples" / "quickstart.yaml"
HEAD = "apiVersion: chatmodel.dev/v1alpha1\nkind: ChatModel\nmetadata: {name: bot}\n"


def chatmodel(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CHATMODEL_DEBUG"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "chatmodel_serving.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
    )


def problems(done: subprocess.CompletedProcess[str], code: int, prefix: str) -> list[str]:
    """The stderr lines of a refused command, checked for what every refusal must be; prefix dropped."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "errors.pydantic.dev" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith(f"{prefix}: ") for line in lines), done.stderr
    return [line.removeprefix(f"{prefix}: ") for line in lines]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def bad_manifest(tmp_path: Path) -> Path:
    """Wrong fields at several depths, a bad value, a refused choice and a cross-field (CEL) rule."""
    return write(
        tmp_path / "bad.yaml",
        HEAD
        + textwrap.dedent(
            """\
        spec:
          bogus: 1
          fineTune:
            method: qlora
            hyperparameter: {epochs: 1}
            dataset: {source: builtin://tidewell-faq, validationSplit: 0.1, validationSource: file:///v.jsonl}
          serving:
            replicas: {min: two}
        """
        ),
    )


BAD_MANIFEST_LINES = [
    "spec.bogus: unknown field; known: baseModel, fineTune, serving, access, rollout, storage",
    "spec.fineTune.method: Input should be 'lora' or 'full' (got 'qlora')",
    "spec.fineTune.hyperparameter: unknown field; did you mean hyperparameters?",
    "spec.fineTune.dataset: set validationSplit or validationSource, not both",
    "spec.serving.replicas.min: Input should be a valid integer, unable to parse string as an integer "
    "(got 'two')",
]


@pytest.mark.parametrize("command", ["render", "run"])
def test_a_manifest_with_wrong_fields_gets_a_line_per_field(command: str, bad_manifest: Path) -> None:
    lines = problems(chatmodel(command, bad_manifest), 2, f"chatmodel {command}")
    assert sorted(lines) == sorted(f"{bad_manifest}: {line}" for line in BAD_MANIFEST_LINES)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (  # a CEL rule of the CRD (x-kubernetes-validations), checked by the spec model too
            HEAD + "spec:\n  serving:\n    replicas: {min: 5, max: 1}\n",
            "spec.serving.replicas.min must be <= max",
        ),
        (
            "kind: ChatModel\nmetadata:\n  name: bot\n   extra: 1\n",
            "line 4, column 9: mapping values are not allowed here",
        ),
        (
            "kind: ChatModel\nmetadata: {name: [bot\n",
            "line 3, column 1: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence at line 2)",
        ),
        ("- a list\n- not an object\n", "expected a Kubernetes object (a mapping), not a YAML list"),
        ("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n", "no document of kind ChatModel"),
    ],
    ids=["cel-rule", "yaml-indent", "yaml-unclosed", "not-a-mapping", "no-chatmodel"],
)
def test_render_refuses_a_bad_file_in_one_line(tmp_path: Path, text: str, line: str) -> None:
    path = write(tmp_path / "m.yaml", text)
    assert problems(chatmodel("render", path), 2, "chatmodel render") == [f"{path}: {line}"]


def test_of_two_documents_the_bad_one_is_named(tmp_path: Path) -> None:
    bad = HEAD.replace("bot", "other") + "spec:\n  serving: {replicas: {min: 101}, dtype: float8}\n"
    path = write(tmp_path / "two.yaml", QUICKSTART.read_text() + "---\n" + bad)
    lines = problems(chatmodel("render", path), 2, "chatmodel render")
    assert sorted(lines) == [
        f"{path}: document 2: spec.serving.dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16' "
        "(got 'float8')",
        f"{path}: document 2: spec.serving.replicas.min: Input should be less than or equal to 100 (got 101)",
    ]


@pytest.mark.parametrize("command", ["render", "run"])
def test_a_missing_manifest(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    lines = problems(chatmodel(command, missing), 2, f"chatmodel {command}")
    assert lines == [f"{missing}: No such file or directory"]


def test_debug_adds_the_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    for done in (
        chatmodel("--debug", "render", missing),
        chatmodel("render", missing, "--debug"),
        chatmodel("render", missing, env={"CHATMODEL_DEBUG": "1"}),
    ):
        assert done.returncode == 2
        assert "Traceback (most recent call last)" in done.stderr and "FileNotFoundError" in done.stderr
        assert done.stderr.splitlines()[-1] == f"chatmodel render: {missing}: No such file or directory"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "chatmodel: error: the following arguments are required: COMMAND"),
        (["render"], "chatmodel render: error: the following arguments are required: manifest"),
        (["serve", "--port", "abc"], "chatmodel serve: error: argument --port: invalid int value: 'abc'"),
        (["train", "--output", "x"], "chatmodel train: error: the following arguments are required: --data"),
        (["bogus"], "chatmodel: error: argument COMMAND: invalid choice: 'bogus'"),
    ],
)
def test_usage_errors_are_argparse_s(args: list[str], message: str) -> None:
    done = chatmodel(*args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0].startswith("usage: chatmodel")
    assert done.stderr.splitlines()[-1].startswith(message), done.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--port", "70000"], "--port 70000: not a port number (0 to 65535)"),
        (["--model", "/no/such/model"], "--model /no/such/model: no such folder"),
        (
            ["--api-keys-file", "/no/such/keys"],
            "--api-keys-file: cannot read /no/such/keys: No such file or directory",
        ),
        (["--host", "192.0.2.1"], "--host 192.0.2.1: not an address of this machine"),  # TEST-NET-1
        (
            ["--tls-cert-file", __file__],
            "--tls-key-file: TLS needs both --tls-cert-file and --tls-key-file",
        ),
    ],
    ids=["port-range", "model-missing", "keys-missing", "host-not-here", "tls-half"],
)
def test_serve_refuses_bad_options_before_loading_a_model(args: list[str], line: str) -> None:
    assert problems(chatmodel("serve", *args), 2, "chatmodel serve") == [line]


def test_api_keys_file_names_its_bad_line(tmp_path: Path) -> None:
    keys = write(tmp_path / "keys", "# team keys\nsk-one rpm=60\nsk-two rpm=lots\n")
    (line,) = problems(chatmodel("serve", "--api-keys-file", keys), 2, "chatmodel serve")
    assert line.startswith(f"--api-keys-file: {keys} line 3: ") and "rpm=lots" in line


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("command", [["serve"], ["run", str(QUICKSTART)]], ids=["serve", "run"])
def test_a_port_in_use_is_told_before_the_work_starts(command: list[str], busy_port: int) -> None:
    lines = problems(chatmodel(*command, "--port", str(busy_port)), 1, f"chatmodel {command[0]}")
    assert lines == [
        f"--port {busy_port}: 127.0.0.1:{busy_port} is in use; stop what listens there or pick another port"
    ]


def test_train_names_each_bad_line_of_its_data(tmp_path: Path) -> None:
    data = write(
        tmp_path / "data.jsonl",
        '{"input": "hi", "output": "hello"}\n{"input": "hi", "output": \n\n{"input": "no answer"}\n',
    )
    out, term = tmp_path / "out", tmp_path / "termination-log"
    done = chatmodel("train", "--data", data, "--output", out, "--termination-message-path", term)
    assert problems(done, 2, "chatmodel train") == [
        f"{data}: line 2: invalid JSON: Expecting value (column 27)",
        f"{data}: line 4: missing field 'output' (expected 'input' and 'output', or 'messages')",
    ]
    assert not out.exists() and term.read_text().startswith("error:")


def test_triton_commands_name_the_missing_folder(tmp_path: Path) -> None:
    repo = problems(chatmodel("triton-server", "--repo", tmp_path / "nope"), 2, "chatmodel triton-server")
    assert repo == [f"--repo: {tmp_path / 'nope'}: no such folder (chatmodel triton-repo writes one)"]
    done = chatmodel("triton-repo", "--model", "/no/model", "--out", tmp_path / "repo")
    assert problems(done, 2, "chatmodel triton-repo") == ["--model: /no/model: no such model folder"]
    assert not (tmp_path / "repo").exists()


def test_chat_with_no_server_is_one_line() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = chatmodel("chat", "--url", f"http://127.0.0.1:{port}/v1", "hello")
    assert problems(done, 1, "chatmodel chat") == [f"http://127.0.0.1:{port}/v1: Connection error."]


def test_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    sample = ROOT / "manifests" / "samples" / "two-versions.yaml"
    # The reader gone before the first write: deterministic, whatever the pipe's buffer holds.
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatmodel_serving.cli", "render", str(sample)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1 and err == ""  # Python's convention for EPIPE; never 141 (SIGPIPE)
    # As typed in a shell: more output than a pipe holds, so `head` closes it mid-stream.
    big = write(tmp_path / "many.yaml", "---\n".join(sample.read_text() for _ in range(40)))
    cmd = f"{sys.executable} -m chatmodel_serving.cli render {big} | head -1; echo ${{PIPESTATUS[0]}} >&2"
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert done.stdout == "apiVersion: apps/v1\n" or done.stdout.count("\n") == 1, done.stdout
    assert done.stderr == "1\n", done.stderr


def test_ctrl_c_exits_130_without_a_traceback() -> None:
    with socket.socket() as server:  # accepts the connection and never answers: chat waits on it
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(60)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/v1"
        proc = subprocess.Popen(
            [sys.executable, "-m", "chatmodel_serving.cli", "chat", "--url", url, "hello"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        conn, _ = server.accept()  # the client is now blocked on its first request
        with conn:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip() == "chatmodel chat: interrupted"


def test_anything_else_is_one_line_pointing_at_debug() -> None:
    assert describe(RuntimeError("boom")) == (["RuntimeError: boom (run with --debug for the traceback)"], 1)
    noted = ValueError("bad value")
    noted.add_note("x.yaml: document 3")
    grouped = ExceptionGroup("two", [noted, FileNotFoundError(2, "No such file or directory", "y.yaml")])
    assert describe(grouped) == (["x.yaml: document 3: bad value", "y.yaml: No such file or directory"], 2)
    assert describe(OSError(28, "No space left on device", "/out")) == (["/out: No space left on device"], 1)
    assert field_path(("spec", "env", 0, "name")) == "spec.env[0].name"
