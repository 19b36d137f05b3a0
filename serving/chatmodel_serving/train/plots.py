"""Training you can look at: `training.png` and TensorBoard event files beside metrics.json, both drawn
from the history metrics.json records (train loss per step, eval loss per evaluation).

matplotlib and tensorboard come with the `train` extra and are imported only here, inside the functions:
an environment without them still trains and publishes, only without the pictures (logged once).
TensorBoard reads the event files in the output folder itself, so `tensorboard --logdir` on the folder
that holds several versions shows each version as a run of its own."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("chatmodel.train")
PLOT_FILE = "training.png"
EVENTS_GLOB = "events.out.tfevents.*"
TRAIN_TAG = "train/loss"
EVAL_TAG = "eval/loss"
SIZE_INCHES, DPI = (9.0, 5.0), 100  # 900 x 500 pixels


def eval_points(metrics: dict[str, Any]) -> list[tuple[int, float]]:
    """(step, eval loss) of the evaluation before training (step 0) and of each one after."""
    points = [(0, float(metrics["eval_loss_before"]))] if metrics.get("eval_loss_before") is not None else []
    return points + [(int(e["step"]), float(e["eval_loss"])) for e in metrics.get("eval_history", [])]


def figure(metrics: dict[str, Any]) -> Figure:
    """Train loss per step, eval loss per evaluation, the best checkpoint and an early stop marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    train = metrics.get("train_history", [])
    if train:
        ax.plot(
            [e["step"] for e in train],
            [e["loss"] for e in train],
            color="tab:blue",
            lw=1.2,
            alpha=0.8,
            label="train loss (per step)",
        )
    evals = eval_points(metrics)
    if evals:
        ax.plot(
            *zip(*evals, strict=True),
            color="tab:orange",
            marker="o",
            lw=1.8,
            label="eval loss (per evaluation)",
        )
    best_step = int(metrics.get("best_step") or 0)
    best = [loss for step, loss in evals if step == best_step > 0]  # the step-0 eval is no checkpoint
    if best:
        ax.axvline(best_step, color="tab:green", ls=":", lw=1.2)
        ax.plot(
            [best_step],
            [best[0]],
            color="tab:green",
            marker="*",
            ms=16,
            ls="none",
            label=f"best checkpoint: step {best_step}, eval loss {best[0]:.4f} (published)",
        )
    if metrics.get("stopped_early"):
        ax.axvline(
            metrics["steps"],
            color="tab:red",
            ls="--",
            lw=1.5,
            label=f"early stop at step {metrics['steps']} of {metrics.get('total_steps', '?')}",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per answer token)")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    out = Path(str(metrics.get("output", "")))
    name = f"{out.parent.name}/{out.name}" if out.parent.name else out.name  # `chatmodel run`: NAME/VERSION
    ax.set_title(f"{name}: {metrics.get('method', '')} fine-tune of {metrics.get('base_model', '')}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", framealpha=0.9)
    return fig


def write_plot(folder: Path, metrics: dict[str, Any]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure(metrics)
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no pyplot state
    path = folder / PLOT_FILE
    fig.savefig(path)
    return path


def write_tensorboard(folder: Path, metrics: dict[str, Any]) -> None:
    """The scalars HF Trainer's `--report-to tensorboard` users look for: train/loss, eval/loss."""
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

    writer = SummaryWriter(log_dir=str(folder))
    try:
        for e in metrics.get("train_history", []):
            writer.add_scalar(TRAIN_TAG, e["loss"], int(e["step"]))
        for e in metrics.get("eval_history", []):
            writer.add_scalar(EVAL_TAG, e["eval_loss"], int(e["step"]))
    finally:
        writer.close()


def write_reports(folder: Path, metrics: dict[str, Any]) -> None:
    """Both pictures of the run into `folder` (rank 0's staging folder, beside metrics.json). A missing
    package or a failure drawing costs the picture, never the trained model."""
    for what, write in (("training.png", write_plot), ("TensorBoard logs", write_tensorboard)):
        try:
            write(folder, metrics)
        except ImportError as exc:
            log.warning("no %s: %s (install the `train` extra)", what, exc)
        except Exception:
            log.warning("could not write the %s", what, exc_info=True)


def report_lines(output: Path, compare: bool = False) -> list[str]:
    """Where a published run's picture and TensorBoard logs are, for the commands to print; `compare`:
    the output's parent holds the other versions of the same model (`chatmodel run`'s work dir)."""
    lines = []
    if (output / PLOT_FILE).is_file():
        lines.append(f"training curves: {output / PLOT_FILE}")
    if any(output.glob(EVENTS_GLOB)):
        logdir, note = (output.parent, ", each version a run") if compare else (output, "")
        lines.append(f"TensorBoard logs: {output} (view: tensorboard --logdir {logdir}{note})")
    return lines
