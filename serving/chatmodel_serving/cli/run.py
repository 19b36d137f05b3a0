"""`chatmodel run MANIFEST.yaml`: what the operator does in a cluster, on this machine.

The manifest is validated by the operator's own spec model. When it has spec.fineTune, the fine-tune
runs here (local paths, file:// or builtin:// data; relative paths are taken from the manifest's
folder) into ARTIFACTS/NAME/VERSION, and is reused on the next run while the recipe and data are
unchanged. Then the result is served with the OpenAI API until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import CliError, validation_lines, yaml_line

if TYPE_CHECKING:
    from chatmodel_operator.runtime_args import ServeOptions
    from chatmodel_operator.spec import ChatModel

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


def local_source(source: str, folder: Path, what: str) -> str:
    """pvc:// exists only in a cluster; relative file:// paths are taken from the manifest's folder."""
    if source.startswith("pvc://"):
        raise ManifestError(f"{what} {source}: pvc:// sources exist only in a cluster; use a local path here")
    if source.startswith("file://"):
        path = Path(source[len("file://") :]).expanduser()
        return str(path if path.is_absolute() else (folder / path).resolve())
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
    base = local_source(cm.spec.base_model.source, folder, "spec.baseModel.source")
    ft = cm.spec.fine_tune
    if ft is None:
        return Plan(cm, base, None)
    ds, hp = ft.dataset, ft.hyperparameters
    data = local_source(ds.source, folder, "spec.fineTune.dataset.source")
    validation = (
        local_source(ds.validation_source, folder, "spec.fineTune.dataset.validationSource")
        if (ds.validation_source)
        else None
    )
    config = TrainConfig(
        base_model=base,
        data=data,
        validation_data=validation,
        validation_split=0.1 if ds.validation_split is None else ds.validation_split,
        output=(work_dir / cm.metadata.name / model_version(cm.spec)).resolve(),
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


def fine_tune(p: Plan, json_lines: bool | None = None) -> dict[str, Any] | None:
    """Train unless an earlier run left a model made from the same recipe and data; return its metrics."""
    if p.train is None:
        return None
    from ..train.artifact import read_metrics
    from ..train.trainer import train

    cfg = p.train
    done = read_metrics(cfg.output) if cfg.output.exists() else None
    if done is not None and done.get("fingerprint") == cfg.fingerprint():
        log.info("reusing the fine-tuned model in %s (same recipe and data)", cfg.output)
        return done
    cfg.overwrite = True  # a stale folder from another recipe or dataset
    return train(cfg, json_lines=json_lines).metrics


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


def run(args: argparse.Namespace) -> int:
    from ..logs import setup_logging

    setup_logging("text" if sys.stderr.isatty() else "json")
    # A bad manifest or dataset raises ManifestError, DataError or ValueError: chatmodel_serving.cli.main
    # reports each problem on a line of its own and exits 2.
    p = plan(args.manifest, args.work_dir, args.device)
    if not args.train_only:  # a port in use is told now, not after a fine-tune of minutes
        from .serve import check_listen_address

        check_listen_address(args.host, args.port)
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
    if args.train_only:
        print(p.model_source)
        return 0
    if p.manifest.spec.access is not None and not args.api_keys_file:
        log.warning("spec.access names a Secret, which exists only in a cluster: this local API is open")
    if p.manifest.spec.serving.runtime == "vllm":
        from .vllm import serve_manifest

        trained = str(p.train.output) if p.train else None
        return serve_manifest(p.manifest, p.base_source, trained, args.host, args.port, args.api_keys_file)
    opts = serve_options(p, args.host, args.port, args.with_base, args.api_keys_file)
    from .serve import serve

    names = ", ".join(opts.served_model_names or [])
    print(f"OpenAI endpoint: http://{args.host}:{args.port}/v1  models: {names}", file=sys.stderr, flush=True)
    if opts.ui:
        print(f"Playground: http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    return serve(opts)
