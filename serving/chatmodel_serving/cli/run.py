"""`chatmodel run MANIFEST.yaml`: what the operator does in a cluster, on this machine.

The manifest is validated by the operator's own spec model. When it has spec.fineTune, the fine-tune
runs here (local paths, file:// or builtin:// data; relative paths are taken from the manifest's
folder) into ARTIFACTS/NAME/VERSION, and is reused on the next run while the recipe and data are
unchanged. While it trains the base version serves, and the fine-tuned version rolls in once it passes
spec.rollout.gate (serve_base_first; --train-first serves only after the fine-tune, as vLLM runs do).
Served with the OpenAI API until Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import CliError, validation_lines, yaml_line

if TYPE_CHECKING:
    from chatmodel_operator.runtime_args import ServeOptions
    from chatmodel_operator.spec import ChatModel, RemoteAccess

    from ..api.state import ServerState
    from ..train.config import TrainConfig

log = logging.getLogger("chatmodel.run")
DEFAULT_WORK_DIR = Path("artifacts")


class ManifestError(CliError, ValueError):
    """A manifest `chatmodel run` cannot run: one line per problem (exit code 2)."""


@dataclass
class Plan:
    """What a manifest asks for, made concrete for this machine."""

    manifest: ChatModel
    base_source: str
    train: TrainConfig | None

    @property
    def name(self) -> str:
        return self.manifest.metadata.name

    @property
    def model_source(self) -> str:
        return str(self.train.output) if self.train else self.base_source


def local_source(
    source: str,
    folder: Path,
    what: str,
    access: RemoteAccess | None = None,
    revisions: dict[str, str] | None = None,
) -> str:
    """pvc:// exists only in a cluster; relative file:// paths are taken from the manifest's folder; hf:// and
    s3:// are downloaded into the local cache (once), their resolved revision noted in `revisions`."""
    if source.startswith("pvc://"):
        raise ManifestError(f"{what} {source}: pvc:// sources exist only in a cluster; use a local path here")
    if source.startswith("file://"):
        path = Path(source[len("file://") :]).expanduser()
        return str(path if path.is_absolute() else (folder / path).resolve())
    if source.startswith(("hf://", "s3://")):
        from ..fetch import FetchError, Settings, pull

        if access is not None and access.credentials_secret_ref is not None:
            log.info(
                "%s: credentialsSecretRef names a Secret, which exists only in a cluster: "
                "HF_TOKEN / AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY come from the environment",
                what,
            )
        settings = Settings.for_source(
            source, *((access.endpoint, access.region, access.path_style) if access is not None else ())
        )
        try:
            pulled = pull(source, settings)
        except FetchError as exc:
            raise ManifestError(f"{what}: {exc}") from None
        if revisions is not None:
            revisions[source] = pulled.revision
        return str(pulled.path)
    return source


def load(manifest_path: Path) -> ChatModel:
    import yaml
    from pydantic import ValidationError

    from chatmodel_operator.spec import ChatModel, load_manifest

    try:
        return load_manifest(manifest_path)
    except OSError as exc:
        raise ManifestError(f"{manifest_path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(yaml_line(exc)) from None
    except ValidationError as exc:
        raise ManifestError(
            [f"{manifest_path}: {line}" for line in validation_lines(exc, ChatModel)]
        ) from None
    except ValueError as exc:  # no ChatModel in the file (the message names it)
        raise ManifestError(str(exc)) from None


def plan(manifest_path: Path, work_dir: Path = DEFAULT_WORK_DIR, device: str = "auto") -> Plan:
    from chatmodel_operator.spec import model_version

    from ..train.config import TrainConfig

    cm = load(manifest_path)
    folder = manifest_path.resolve().parent
    revisions: dict[str, str] = {}
    base = local_source(
        cm.spec.base_model.source, folder, "spec.baseModel.source", cm.spec.base_model, revisions
    )
    ft = cm.spec.fine_tune
    if ft is None:
        return Plan(cm, base, None)
    ds, hp = ft.dataset, ft.hyperparameters
    data = local_source(ds.source, folder, "spec.fineTune.dataset.source", ds, revisions)
    validation = (
        local_source(ds.validation_source, folder, "spec.fineTune.dataset.validationSource", ds, revisions)
        if (ds.validation_source)
        else None
    )
    config = TrainConfig(
        base_model=base,
        data=data,
        validation_data=validation,
        validation_split=0.1 if ds.validation_split is None else ds.validation_split,
        output=(work_dir / cm.metadata.name / model_version(cm.spec, revisions)).resolve(),
        method=ft.method,
        epochs=hp.epochs,
        learning_rate=hp.learning_rate,
        batch_size=hp.batch_size,
        max_seq_length=hp.max_seq_length,
        device=device,
        save_steps=0,  # a local run restarts from scratch; checkpoints of a full model cost GBs of writes
        termination_message_path=None,
    )
    return Plan(cm, base, config)


def trained_before(p: Plan) -> dict[str, Any] | None:
    """The metrics of the model an earlier run made from the same recipe and data, if it is there."""
    if p.train is None:
        return None
    from ..train.artifact import read_metrics

    done = read_metrics(p.train.output) if p.train.output.exists() else None
    return done if done is not None and done.get("fingerprint") == p.train.fingerprint() else None


def fine_tune(p: Plan, json_lines: bool | None = None) -> dict[str, Any] | None:
    """Train unless an earlier run left a model made from the same recipe and data; return its metrics."""
    if p.train is None:
        return None
    from ..train.trainer import train

    done = trained_before(p)
    if done is not None:
        log.info("reusing the fine-tuned model in %s (same recipe and data)", p.train.output)
        return done
    p.train.overwrite = True  # a stale folder from another recipe or dataset
    return train(p.train, json_lines=json_lines).metrics


def judge(p: Plan, metrics: dict[str, Any]) -> str | None:
    """spec.rollout.gate's verdict on the fine-tuned version: None when it may serve, else why not (the
    operator's own check, Gate.refusal). Recorded in gate.json beside its metrics.json, which GET /v1/versions
    and the playground's Versions view show."""
    from ..train.artifact import write_gate

    assert p.train is not None
    gate = p.manifest.spec.rollout.gate
    refused = gate.refusal(metrics.get("eval_loss"), metrics.get("eval_loss_before")) if gate else None
    settings = gate.model_dump(by_alias=True, exclude_none=True) if gate else None
    write_gate(p.train.output, refused is None, refused or "", settings)
    return refused


def serve_options(p: Plan, host: str, port: int, with_base: bool, api_keys_file: str | None) -> ServeOptions:
    from chatmodel_operator.runtime_args import ServeOptions

    sv = p.manifest.spec.serving
    models, names = [p.model_source], [p.name]
    if with_base and p.train is not None:
        models.append(p.base_source)
        names.append(f"{p.name}-base")
    opts = ServeOptions(
        models=models,
        served_model_names=names,
        host=host,
        port=port,
        api_keys_file=api_keys_file,
        dtype=sv.dtype,
        default_max_tokens=sv.generation.max_tokens,
        default_temperature=sv.generation.temperature,
        ui=sv.ui,
    )
    if sv.max_batch_size:
        opts.max_batch_size = sv.max_batch_size
    if sv.max_waiting_requests:
        opts.max_waiting_requests = sv.max_waiting_requests
    return opts


def serve_args(opts: ServeOptions) -> list[str]:
    """The same options as `chatmodel serve` arguments, for a server in a child process (which is given
    its own --host and --port)."""
    return opts.to_argv(exclude=("host", "port"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="a ChatModel YAML, as for kubectl apply")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="checked before the fine-tune starts")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="where fine-tuned models go")
    parser.add_argument("--with-base", action="store_true", help="also serve the base model as NAME-base")
    parser.add_argument("--api-keys-file", help="API keys for the local server (spec.access names a Secret)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument(
        "--train-only", action="store_true", help="fine-tune (or reuse), print the folder, exit"
    )
    parser.add_argument(
        "--train-first",
        action="store_true",
        help="serve only once the fine-tune is done (default: the base version answers meanwhile)",
    )


def run(args: argparse.Namespace) -> int:
    from ..logs import setup_logging

    setup_logging("text" if sys.stderr.isatty() else "json")
    # A bad manifest or dataset raises ManifestError, DataError or ValueError: chatmodel_serving.cli.main
    # reports each problem on a line of its own and exits 2.
    p = plan(args.manifest, args.work_dir, args.device)
    started = time.monotonic()
    if not args.train_only:  # a port in use is told now, not after a fine-tune of minutes
        from .serve import check_listen_address

        check_listen_address(args.host, args.port)
        if p.manifest.spec.access is not None and not args.api_keys_file:
            log.warning("spec.access names a Secret, which exists only in a cluster: this local API is open")
    runtime = p.manifest.spec.serving.runtime
    wait = args.train_only or args.train_first or runtime == "vllm"
    if p.train is not None and not wait and trained_before(p) is None:
        return serve_base_first(p, args, started)
    metrics = fine_tune(p)
    if metrics is not None:
        before, after = metrics["eval_loss_before"], metrics["eval_loss"]
        print(
            f"fine-tuned {p.name}: eval loss {before:.4f} -> {after:.4f}; model in {p.model_source}",
            file=sys.stderr,
        )
        from ..train.plots import report_lines

        for line in report_lines(Path(p.model_source), compare=True):
            print(line, file=sys.stderr)
        refused = judge(p, metrics)
        if p.manifest.spec.rollout.gate is not None:
            verdict = f"refused: {refused}" if refused else "passed"
            print(f"spec.rollout.gate: {verdict} (recorded in {p.model_source}/gate.json)", file=sys.stderr)
    if args.train_only:
        print(p.model_source)
        return 0
    if p.manifest.spec.serving.runtime == "vllm":
        from .vllm import serve_manifest

        trained = str(p.train.output) if p.train else None
        return serve_manifest(p.manifest, p.base_source, trained, args.host, args.port, args.api_keys_file)
    opts = serve_options(p, args.host, args.port, args.with_base, args.api_keys_file)
    from .serve import serve

    announce(args, opts)
    return serve(opts)


def announce(args: argparse.Namespace, opts: ServeOptions) -> None:
    names = ", ".join(opts.served_model_names or [])
    print(f"OpenAI endpoint: http://{args.host}:{args.port}/v1  models: {names}", file=sys.stderr, flush=True)
    if opts.ui:
        print(f"Playground: http://{args.host}:{args.port}/", file=sys.stderr, flush=True)


def serve_base_first(p: Plan, args: argparse.Namespace, started: float) -> int:
    """The version flow the operator runs on a cluster: the base version answers at once as NAME while
    the fine-tune runs beside it (a thread of this process), and its version rolls in when it passes
    spec.rollout.gate: NAME then serves it, NAME-VERSION names it, and NAME-base (with --with-base) stays.
    A refused or failed fine-tune leaves NAME on the base version and says why."""
    import functools

    from .serve import serve

    tuned = serve_options(p, args.host, args.port, args.with_base, args.api_keys_file)
    opts = dataclasses.replace(tuned, models=[p.base_source], served_model_names=[p.name])
    announce(args, opts)
    return serve(opts, functools.partial(train_and_roll_in, p, tuned, args.with_base, started))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def train_and_roll_in(
    p: Plan, opts: ServeOptions, with_base: bool, started: float, state: ServerState
) -> None:
    """The fine-tune, then the version added to the running server if the gate lets it serve."""
    from .serve import serve_model

    assert p.train is not None
    version = p.train.output.name
    if with_base:  # the same loaded model and engine under a second name
        base = state.models[p.name]
        state.models = {**state.models, f"{p.name}-base": dataclasses.replace(base, name=f"{p.name}-base")}
    _say(f"{p.name}: the base version serves; fine-tuning version {version} beside it ...")
    try:
        metrics = fine_tune(p, json_lines=True)
    except Exception as exc:  # the server goes on with the base version
        log.exception("fine-tune failed")
        _say(f"{p.name}: the fine-tune of version {version} failed ({exc}); the base version serves on")
        return
    assert metrics is not None
    loss, before = metrics.get("eval_loss"), metrics.get("eval_loss_before")
    refused = judge(p, metrics)  # also recorded in gate.json, for the Versions view
    if refused:
        _say(
            f"{p.name}: version {version} refused by spec.rollout.gate: {refused}; the base version serves on"
        )
        return
    from ..train.plots import report_lines

    for line in report_lines(Path(p.model_source), compare=True):
        _say(line)
    tuned = serve_model(opts, p.model_source, f"{p.name}-{version}")
    # One assignment: the routes and the metrics read state.models without a lock.
    state.models = {**state.models, tuned.name: tuned, p.name: dataclasses.replace(tuned, name=p.name)}
    _say(
        f"{p.name}: version {version} rolled in {time.monotonic() - started:.0f} s after start "
        f"(eval loss {before:.4f} -> {loss:.4f}); {p.name} and {tuned.name} serve it"
    )
