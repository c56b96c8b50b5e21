"""Notebooks are committed without outputs and run top to bottom on the bundled model."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [*sorted((ROOT / "notebooks").glob("*.ipynb")), ROOT / "dashboard" / "chat.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs: clear them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_top_to_bottom(
    path: Path, cache_dir: Path, first_load: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("ADAPTERS_DIR", str(tmp_path / "adapters"))  # where notebook 03 saves its adapter
    monkeypatch.setenv("LORA_STEPS", "2")  # notebook 03: the mechanics, not the lesson (tests/test_adapters.py)
    monkeypatch.setenv("EVAL_EVERY", "9")  # notebook 07: every ninth question (tests/evals/ measure the rest)
    monkeypatch.setenv("TOOLKIT_STORE", str(tmp_path / "toolkit.db"))
    monkeypatch.delenv("MODEL_ID", raising=False)
    monkeypatch.delenv("GRAPHQL_URL", raising=False)
    if path.parent.name == "dashboard":
        # the dashboard talks to GRAPHQL_URL; with no server there it must show a banner, not fail
        monkeypatch.setenv("GRAPHQL_URL", "http://127.0.0.1:9/graphql")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    if path.name == "01_quickstart.ipynb":  # the %%ask magic in a real kernel
        ask = next(c for c in nb.cells if c.source.startswith("%%ask"))
        shown = [o for o in ask.outputs if o.output_type == "display_data"]
        assert shown and "Paris" in shown[-1]["data"]["text/markdown"]  # the streamed updates ended on the answer
        printed = next(c for c in nb.cells if "print(answer" in c.source)
        assert "Paris" in printed.outputs[0]["text"]
    if path.name == "03_lora_adapter.ipynb":  # trained, plotted, saved with its card, served
        assert (tmp_path / "adapters" / "quenby" / "adapter_card.json").is_file()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert any("image/png" in o.get("data", {}) for o in outputs)  # the loss curve
        table = next(o for o in outputs if "| question | base model |" in o.get("data", {}).get("text/markdown", ""))
        assert table["data"]["text/markdown"].count("\n") == 6  # header, rule and five questions
    if path.name == "07_evaluate.ipynb":  # the summary, the chart, the matrix, the diffs; the rerun from the store
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert any("image/png" in o.get("data", {}) for o in outputs)
        html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
        assert sum("McNemar" in h for h in html) == 2 and any("✓" in h and "<table>" in h for h in html)
        printed = next(o for c in nb.cells if "again = " in c.source for o in c.outputs if o.get("name") == "stdout")
        assert printed["text"].strip() == "20 of 20 answers from the store"  # 5 questions x 4 variants, unchanged
