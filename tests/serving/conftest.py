"""One real server on the built-in model for the API tests (float32, so greedy answers are bit-for-bit
reproducible whatever the batch), with an API key file, once per runtime: `pytorch` is `chatmodel serve`
itself; `triton` is tritonserver on a generated repository with `chatmodel serve --backend triton://` in
front, so users see one API whichever runtime a ChatModel picks. CHATMODEL_TEST_RUNTIMES=pytorch runs one."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import openai
import pytest

from chatmodel_serving.launch import ServerProcess
from tests.serving.helpers import API_KEY, MODEL, RUNTIMES, Ask
from tests.tools import missing

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion
    from transformers import PreTrainedTokenizerBase


@pytest.fixture(scope="session", params=RUNTIMES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    runtime = request.param
    d = tmp_path_factory.mktemp(f"server-{runtime}")
    keys = d / "keys"
    keys.write_text(f"# comment\nother-key\n{API_KEY}\n")
    args = ["--dtype", "float32", "--api-keys-file", str(keys), "--max-waiting-requests", "64"]
    if runtime == "pytorch":
        with ServerProcess(args, log_path=d / "server.log") as srv:
            yield srv
        return
    if importlib.util.find_spec("pytriton") is None:
        missing("tritonserver (nvidia-pytriton, the triton extra)", "make install")
    from chatmodel_serving.triton.server import triton_front

    with triton_front(d, args, dtype="float32") as (_, front):
        yield front


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def tokenizer() -> (
    PreTrainedTokenizerBase
):  # the same tokenizer the server uses, to count tokens independently
    from transformers import AutoTokenizer

    from chatmodel_serving.models import resolve_source

    return AutoTokenizer.from_pretrained(resolve_source("builtin://smollm2-135m"))


@pytest.fixture
def ask(client: openai.OpenAI) -> Ask:
    def ask(content: str, **kw: Any) -> ChatCompletion:
        kw.setdefault("max_tokens", 32)
        kw.setdefault("temperature", 0)
        completion: ChatCompletion = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], **kw
        )
        return completion

    return ask
