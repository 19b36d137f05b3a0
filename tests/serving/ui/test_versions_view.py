"""The playground's Versions view in a real browser, from two real fine-tunes: `chatmodel run --train-only`
makes two versions of one ChatModel (the cheapest real recipe: two short epochs on 8 of the builtin FAQ's
questions, at two learning rates; the run records the gate's verdict), `chatmodel serve` serves both beside
the plain base model, and the view draws both eval curves with the final eval losses metrics.json holds, the
verdicts gate.json holds, "no training record" for the base model, and the live figures of a request it
answered; axe-core finds no serious or critical violation there. GET /v1/versions is under the API key and
in /openapi.json. With CHATMODEL_UPDATE_SCREENSHOT=1 the screenshot is README's
(docs/img/versions-view.png)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from chatmodel_serving.launch import ServerProcess
from chatmodel_serving.train.data import BUILTIN_DATA
from tests.serving.ui.test_playground import axe_violations, use_key
from tests.tools import ROOT

KEY = "versions-test-key-7"
NAME = "tidewell"
# Two epochs of 2 steps over 8 of the FAQ's questions (2 held out, as tests/train's small_data): three
# evaluations per curve (the first before training) for the price of 4 steps.
RECIPE = {"epochs": 2, "batchSize": 4, "maxSeqLength": 128}
LEARNING_RATES = (3.0e-4, 3.0e-3)
SCREENSHOT_LIMIT = 200_000  # bytes: commit-worthy


@dataclass
class Served:
    server: ServerProcess
    versions: dict[str, Path]  # version -> its model folder (metrics.json, gate.json)

    def metrics(self, version: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.versions[version] / "metrics.json").read_text())
        return data

    def gate(self, version: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.versions[version] / "gate.json").read_text())
        return data


def manifest(folder: Path, learning_rate: float) -> Path:
    doc = {
        "apiVersion": "chatmodel.dev/v1alpha1",
        "kind": "ChatModel",
        "metadata": {"name": NAME},
        "spec": {
            "baseModel": {"source": "builtin://smollm2-135m"},
            "fineTune": {
                "dataset": {"source": "file://train.jsonl", "validationSource": "file://val.jsonl"},
                "method": "full",
                "hyperparameters": {**RECIPE, "learningRate": learning_rate},
            },
            "rollout": {"gate": {"requireImprovement": True}},
        },
    }
    path = folder / f"lr-{learning_rate}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    d = tmp_path_factory.mktemp("versions")
    lines = (BUILTIN_DATA / "tidewell-faq.jsonl").read_text().splitlines(keepends=True)
    (d / "train.jsonl").write_text("".join(lines[:8]))
    (d / "val.jsonl").write_text("".join(lines[8:10]))
    versions: dict[str, Path] = {}
    for lr in LEARNING_RATES:
        cmd = [sys.executable, "-m", "chatmodel_serving.cli", "run", str(manifest(d, lr)), "--train-only"]
        done = subprocess.run(
            [*cmd, "--work-dir", str(d / "artifacts")], capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
        folder = Path(done.stdout.strip().splitlines()[-1])
        assert "spec.rollout.gate:" in done.stderr  # the run says its verdict
        versions[folder.name] = folder
    # Two versions of one ChatModel, in ARTIFACTS/NAME/VERSION
    assert len(versions) == 2 and {f.parent.name for f in versions.values()} == {NAME}
    keys = d / "keys"
    keys.write_text(KEY + "\n")
    args = ["--dtype", "float32", "--api-keys-file", str(keys)]
    for version, folder in versions.items():
        args += ["--model", str(folder), "--served-model-name", f"{NAME}-{version}"]
    args += ["--model", "builtin://smollm2-135m", "--served-model-name", f"{NAME}-base"]
    with ServerProcess(args, log_path=d / "server.log") as srv:
        yield Served(srv, versions)


def test_versions_endpoint_is_keyed_documented_and_reads_the_records(served: Served) -> None:
    srv = served.server
    assert httpx.get(srv.url + "/versions").status_code == 401
    assert "/v1/versions" in httpx.get(srv.base + "/openapi.json").json()["paths"]
    r = httpx.get(srv.url + "/versions", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    by_name = {e["names"][0]: e for e in r.json()["data"]}
    assert by_name[f"{NAME}-base"]["training"] is None
    for version in served.versions:
        record = by_name[f"{NAME}-{version}"]["training"]
        metrics = served.metrics(version)
        assert record["version"] == version and record["eval_loss"] == metrics["eval_loss"]
        assert [p["eval_loss"] for p in record["eval_curve"]] == [metrics["eval_loss_before"]] + [
            e["eval_loss"] for e in metrics["eval_history"]
        ]
        assert record["gate"] == served.gate(version)


def test_the_view_draws_both_curves_with_their_final_losses_and_live_figures(
    browser: Any, served: Served
) -> None:
    srv = served.server
    asked = sorted(served.versions)[0]
    answer = httpx.post(
        srv.url + "/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": f"{NAME}-{asked}", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
        timeout=300,
    )
    assert answer.status_code == 200, answer.text
    context = browser.new_context(bypass_csp=True, viewport={"width": 1100, "height": 760})
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(srv.base + "/")
    use_key(page, KEY)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Connected')")
    page.click("#show-versions")
    page.wait_for_function("document.querySelectorAll('#versions-table tbody tr').length === 3")
    assert page.is_hidden("#chat-view") and page.get_attribute("#show-versions", "aria-pressed") == "true"
    drawn = page.eval_on_selector_all("#eval-chart svg path.curve", "ps => ps.map(p => p.dataset.version)")
    assert sorted(drawn) == sorted(served.versions)  # two curves, one per fine-tuned version
    for version in served.versions:
        row = page.locator(f"#versions-table tr[data-names='{NAME}-{version}']")
        final = row.locator("td.final")
        loss = served.metrics(version)["eval_loss"]
        assert float(final.get_attribute("data-value") or "nan") == loss
        assert final.inner_text() == f"{loss:.4f}"
        gate = served.gate(version)
        verdict = "passed" if gate["passed"] else f"refused: {gate['reason']}"
        assert row.locator("td.gate").inner_text() == verdict
        points = page.eval_on_selector(
            f"#eval-chart path.curve[data-version='{version}']", "p => p.getAttribute('d').split('L').length"
        )
        assert points == 1 + len(served.metrics(version)["eval_history"])  # before training, then each eval
    base = page.locator(f"#versions-table tr[data-names='{NAME}-base']")
    assert "no training record" in base.inner_text()
    live = page.locator(f"#versions-table tr[data-names='{NAME}-{asked}']")
    assert live.locator("td.requests").inner_text() == "1" and " s" in live.locator("td").last.inner_text()
    assert axe_violations(page) == []
    shot = (
        ROOT / "docs" / "img" / "versions-view.png"
        if os.environ.get("CHATMODEL_UPDATE_SCREENSHOT") == "1"
        else Path(str(srv.log_path)).parent / "versions-view.png"
    )
    time.sleep(0.2)
    page.screenshot(path=str(shot), full_page=True)
    assert 10_000 < shot.stat().st_size < SCREENSHOT_LIMIT
    assert {r.split("/")[2] for r in requests} == {srv.base.split("/")[2]}  # nothing from elsewhere
    context.close()
