"""Start vLLM's OpenAI server (its CPU build, in .venv-vllm) for a ChatModel, with the arguments the
operator renders for the Deployment (chatmodel_operator.builders.vllm.server_args) and local model paths.

vLLM lives in a virtual environment of its own (`make install-vllm`): its CPU build pins an older
transformers than ours, so it runs as a child process and this module never imports it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from chatmodel_operator.builders.vllm import server_args, server_env
from chatmodel_operator.spec import ChatModel

from ..launch import ReadyProcess, free_port
from . import PROJECT_ROOT

INSTALL = "make install-vllm"
VENV_PYTHON = PROJECT_ROOT / ".venv-vllm" / "bin" / "python"  # where `make install-vllm` puts it
ENTRYPOINT = ["-m", "vllm.entrypoints.openai.api_server"]


def vllm_python() -> Path | None:
    """The interpreter of the vLLM venv: CHATMODEL_VLLM_PYTHON, or .venv-vllm in the project folder."""
    explicit = os.environ.get("CHATMODEL_VLLM_PYTHON")
    path = Path(explicit) if explicit else VENV_PYTHON
    return path if path.exists() else None


class VllmProcess(ReadyProcess):
    """`with VllmProcess(cm, model_dir, loras={...}) as srv:` … srv.url is http://HOST:PORT/v1."""

    what = "vLLM server"

    def __init__(
        self,
        cm: ChatModel,
        model: str,
        loras: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        api_key: str | None = None,
        log_path: Path | None = None,
        ready_timeout: float = 1200.0,  # warm-up takes minutes on a shared CPU
    ):
        super().__init__(log_path, ready_timeout)
        python = vllm_python()
        if python is None:
            raise FileNotFoundError(f"vLLM's virtual environment is missing: run `{INSTALL}`")
        self.python = python
        self.host, self.port = host, port or free_port()
        self.args = server_args(cm, model, self.port, host=host, loras=loras)
        self.env = {e["name"]: e["value"] for e in server_env(cm)}
        self.env |= {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
        if api_key:
            self.env["VLLM_API_KEY"] = api_key

    def command(self) -> list[str]:
        return [str(self.python), *ENTRYPOINT, *self.args]

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    @property
    def ready_url(self) -> str:
        return f"{self.base}/health"


def serve_manifest(
    cm: ChatModel, base: str, trained: str | None, host: str, port: int, api_keys_file: str | None
) -> int:
    """`chatmodel run` for runtime vllm: serve until Ctrl-C. A LoRA fine-tune is served as an adapter on the
    base (NAME, and the base as NAME-base), a full one as the model itself; the same names as in a cluster."""
    import logging

    from chatmodel_operator.builders.vllm import uses_lora

    from ..models import resolve_source
    from .serve import read_api_keys

    keys = read_api_keys(api_keys_file).keys
    if len(keys) > 1:
        logging.getLogger("chatmodel.run").warning(
            "vLLM takes one API key: using the first of %s", api_keys_file
        )
    loras = {cm.metadata.name: trained} if trained and uses_lora(cm) else None
    model = base if loras or not trained else trained
    if "://" in model:  # builtin:// and hf:// as a local folder, as our runtime loads them
        model = str(resolve_source(model))
    srv = VllmProcess(cm, model, loras=loras, host=host, port=port, api_key=keys[0] if keys else None)
    # SIGTERM (a test, a supervisor) must stop vLLM too, not leave it running as an orphan.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    names = f"{cm.metadata.name}, {cm.metadata.name}-base" if loras else cm.metadata.name
    try:
        srv.start()
        print(f"OpenAI endpoint (vLLM): {srv.url}  models: {names}", file=sys.stderr, flush=True)
        assert srv.proc is not None
        return srv.proc.wait()
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        srv.stop()
