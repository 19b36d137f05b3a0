"""`chatmodel run`: the manifest is read by the operator's spec model and turned into a local plan;
the fine-tune runs once and is reused while the recipe and data stay the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatmodel_serving.cli import main
from chatmodel_serving.cli.run import ManifestError, plan, serve_args, serve_options

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = ROOT / "manifests" / "samples" / "quickstart.yaml"


def manifest(tmp_path: Path, spec: str) -> Path:
    path = tmp_path / "chatmodel.yaml"
    path.write_text(
        f"apiVersion: chatmodel.dev/v1alpha1\nkind: ChatModel\nmetadata: {{name: bot}}\nspec:\n{spec}"
    )
    return path


def test_quickstart_plan(tmp_path: Path) -> None:
    p = plan(QUICKSTART, tmp_path)
    assert p.train is not None and p.name == "tidewell-support"
    cfg = p.train
    assert (cfg.method, cfg.epochs, cfg.lr, cfg.batch_size, cfg.max_seq_length) == ("full", 3, 3e-4, 4, 256)
    assert cfg.data == "builtin://tidewell-faq" and cfg.validation_split == 0.1
    assert cfg.output.parent == (tmp_path / "tidewell-support").resolve()  # ARTIFACTS/NAME/VERSION
    opts = serve_options(p, "127.0.0.1", 8123, with_base=True, api_keys_file=None)
    assert opts.models == [str(cfg.output), "builtin://smollm2-135m"]
    assert opts.served_model_names == ["tidewell-support", "tidewell-support-base"]
    assert (opts.default_max_tokens, opts.default_temperature) == (128, 0.2)
    assert serve_args(opts)[:4] == ["--model", str(cfg.output), "--served-model-name", "tidewell-support"]


def test_relative_file_sources_and_base_only(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    spec = "  fineTune:\n    dataset: {source: file://data/train.jsonl, validationSource: file://data/val.jsonl}\n"
    p = plan(manifest(tmp_path, spec), tmp_path)
    assert p.train is not None
    assert p.train.data == str(tmp_path / "data" / "train.jsonl") and p.train.validation_split == 0
    base_only = plan(manifest(tmp_path, "  baseModel: {source: builtin://smollm2-135m}\n"), tmp_path)
    assert base_only.train is None and base_only.model_source == "builtin://smollm2-135m"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("  fineTune:\n    dataset: {source: pvc://datasets/x.jsonl}\n", "exist only in a cluster"),
        ("  fineTune:\n    method: qlora\n    dataset: {source: /x.jsonl}\n", "method"),
        ("  bogus: 1\n", "bogus"),
    ],
)
def test_bad_manifests_are_refused(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        plan(manifest(tmp_path, spec), tmp_path)


@pytest.mark.slow
def test_train_only_runs_once_then_reuses(
    small_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, val = small_data
    spec = (
        f"  fineTune:\n    dataset: {{source: {train}, validationSource: {val}}}\n    method: lora\n"
        "    hyperparameters: {epochs: 1, learningRate: 1.0e-3, batchSize: 8, maxSeqLength: 96}\n"
    )
    path = manifest(tmp_path, spec)
    args = ["run", str(path), "--work-dir", str(tmp_path / "artifacts"), "--train-only"]
    assert main(args) == 0
    printed = capsys.readouterr()
    folder = Path(printed.out.splitlines()[-1])  # after the JSON progress lines
    metrics = json.loads((folder / "metrics.json").read_text())
    assert f"training curves: {folder / 'training.png'}" in printed.err  # where to look, said once trained
    assert f"TensorBoard logs: {folder} (view: tensorboard --logdir {folder.parent}" in printed.err
    assert metrics["steps"] == 1 and (folder / "adapter_config.json").is_file()
    started = (folder / "metrics.json").stat().st_mtime_ns
    assert main(args) == 0  # same recipe and data: reused, not retrained
    assert Path(capsys.readouterr().out.splitlines()[-1]) == folder
    assert (folder / "metrics.json").stat().st_mtime_ns == started
