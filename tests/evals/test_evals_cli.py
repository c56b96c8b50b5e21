"""python -m toolkit.evals against a real server: the summary table, --json, list/show/diff, and the exit
codes CI relies on (0 passed, 1 under --fail-under or broken against --baseline, 2 bad input)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from toolkit.evals import load_dataset
from toolkit.evals.cli import main, parse_variant

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "tests" / "data" / "docs"
GREEDY = "temperature=0,max_new_tokens=40"


@pytest.fixture(scope="module")
def url(settings: Any, loaded: Any) -> Iterator[str]:
    from loopback import serve_in_thread

    from server.app import make_app, make_http_server
    from server.config import ServerSettings
    from toolkit.search import LocalDocsBackend, Searcher
    from toolkit.service import InferenceService

    service = InferenceService(settings, loaded=loaded, searcher=Searcher(LocalDocsBackend(DOCS)))
    served = serve_in_thread(lambda: make_http_server(make_app(service, ServerSettings(port=0, rate_burst=10_000))))
    yield f"http://127.0.0.1:{served.port}/graphql"
    served.stop()
    service.close(grace_s=0)


@pytest.fixture(scope="module")
def questions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One closed-book question and the nine grounded ones (six broken alone give p = 0.031)."""
    keep = {"closed-01", *(f"grounded-{i:02d}" for i in range(1, 10))}
    samples = [s for s in load_dataset(ROOT / "evals" / "examples" / "quality.yaml").samples if s.id in keep]
    path = tmp_path_factory.mktemp("cli") / "questions.jsonl"
    path.write_text("".join(json.dumps(s.to_dict()) + "\n" for s in samples))
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_variant_on_the_command_line() -> None:
    assert parse_variant("grounded:web_search=true,temperature=0.2,system_prompt=Be brief.") == {
        "label": "grounded",
        "web_search": True,
        "temperature": 0.2,
        "system_prompt": "Be brief.",
    }
    assert parse_variant("base:") == {"label": "base"}


def test_run_passes_fails_under_a_rate_and_against_a_baseline(
    capsys: pytest.CaptureFixture[str], url: str, questions: Path, tmp_path: Path
) -> None:
    store = tmp_path / "runs.db"
    out_json = tmp_path / "out.json"

    def run(variant: str, *more: Any) -> tuple[int, str]:
        code, out, _ = cli(
            capsys, "--store", store, "run", questions, "--url", url, "--variant", variant, "--quiet", *more
        )
        return code, out

    code, out = run(f"v:{GREEDY}", "--fail-under", "0.7", "--json", out_json)
    assert code == 0, out
    report = json.loads(out_json.read_text())
    baseline = report["run_id"]
    summary = report["variants"][0]
    assert (summary["name"], summary["n"]) == ("v", 10) and summary["pass_rate"] >= 0.7
    assert summary["ci_low"] < summary["pass_rate"] <= summary["ci_high"] and report["diff"] is None
    assert f"v{' ' * 31}   10{summary['passed']:>8}{summary['pass_rate']:>8.1%}" in out  # the table
    assert len(report["rows"]) == 10 and {"sample_id", "variant", "repeat", "pass"} <= set(report["rows"][0])
    grounded = sorted(r["sample_id"] for r in report["rows"] if r["pass"] and r["sample_id"].startswith("grounded"))
    assert len(grounded) >= 6  # enough for p < 0.05 when they all break

    # the planted change: the same variant name, no search
    code, out = run(f"v:web_search=false,{GREEDY}", "--baseline", baseline, "--json", out_json)
    assert code == 1 and f"{len(grounded)} broken" in out and "FAIL: " in out, out
    report = json.loads(out_json.read_text())
    assert sorted(f["sample_id"] for f in report["diff"][0]["broken"]) == grounded
    assert report["diff"][0]["p_value"] == pytest.approx(2 / 2 ** len(grounded))
    planted = report["run_id"]

    code, out = run(f"v:web_search=false,{GREEDY}", "--fail-under", "0.5")
    assert code == 1 and "under --fail-under" in out  # 1 of 10, and every cell from the store this time

    code, out, _ = cli(capsys, "--store", store, "list")
    assert code == 0 and out.count("\n") == 4 and planted in out and baseline in out
    code, out, _ = cli(capsys, "--store", store, "show", planted)
    assert code == 0 and "grounded-06  0/1\n" in out and "closed-01    1/1\n" in out
    code, out, _ = cli(capsys, "--store", store, "diff", baseline, planted)
    assert code == 0 and "(significant)" in out and "retrieval changed for" in out
    code, out, _ = cli(capsys, "--store", store, "delete", planted)
    assert code == 0
    code, _, err = cli(capsys, "--store", store, "show", planted)
    assert code == 2 and f"no evaluation run '{planted}'" in err


@pytest.mark.parametrize(
    "args,words",
    [
        (["--variant", "no-colon"], "give NAME:key=value"),
        (["--variant", "v:temperature"], "is not key=value"),
        (["--variant", "v:temperature=-3"], "variants[v].params.temperature"),
        (["--variant", "v:model=gpt-9"], "variants[v].model"),
        (["--variant", "v:adapter=nope"], "variants[v].adapter"),
        (["--fail-under", "7"], "--fail-under must be a rate"),
        (["--baseline", "no-such-run"], "no evaluation run 'no-such-run'"),
        (["--variants", "missing.toml"], "cannot read it"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str], url: str, questions: Path, tmp_path: Path, args: list[str], words: str
) -> None:
    code, out, err = cli(capsys, "--store", tmp_path / "runs.db", "run", questions, "--url", url, "--quiet", *args)
    assert code == 2 and words in err and "Traceback" not in err + out, err


def test_a_bad_dataset_exits_2_naming_file_line_and_field(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "ok"}\n{"input": "x", "assert": [{"type": "sounds-like"}]}\n')
    code, _, err = cli(capsys, "--store", tmp_path / "runs.db", "run", bad, "--url", url, "--quiet")
    assert code == 2 and "bad.jsonl, line 2, assert[0].type: unknown assertion type 'sounds-like'" in err


def test_variants_from_a_toml_file(
    capsys: pytest.CaptureFixture[str], url: str, questions: Path, tmp_path: Path
) -> None:
    toml = tmp_path / "variants.toml"
    toml.write_text(
        '[variants.short]\ntemperature = 0\nmax_new_tokens = 8\n\n[variants."no search"]\nweb_search = false\ntemperature = 0\nmax_new_tokens = 8\n'
    )
    code, out, _ = cli(
        capsys, "--store", tmp_path / "runs.db", "run", questions, "--url", url, "--variants", toml, "--quiet"
    )
    assert code == 0 and "short" in out and "no search" in out
    toml.write_text("[variants]\nshort = 3\n")
    code, _, err = cli(capsys, "--store", tmp_path / "runs.db", "run", questions, "--url", url, "--variants", toml)
    assert code == 2 and "[variants.NAME] tables" in err


def test_the_module_runs_from_a_shell(tmp_path: Path, cache_dir: Path, first_load: Any) -> None:
    data = tmp_path / "one.jsonl"
    data.write_text('{"input": "What is the capital of France?", "target": "Paris"}\n')
    env = {**os.environ, "TOOLKIT_CACHE_DIR": str(cache_dir), "SEARCH_PROVIDER": "none", "MODEL_ID": ""}
    env.pop("MODELS_FILE", None)
    done = subprocess.run(  # the model in process, as `make serve` would load it
        [
            sys.executable,
            "-m",
            "toolkit.evals",
            "--store",
            str(tmp_path / "runs.db"),
            "run",
            str(data),
            "--variant",
            "greedy:temperature=0,max_new_tokens=12",
            "--fail-under",
            "1",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0 and "greedy" in done.stdout and "100.0%" in done.stdout, done.stdout + done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "toolkit.evals", "--store", str(tmp_path / "runs.db"), "list"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0 and done.stdout.startswith("id")
    done = subprocess.run(
        [sys.executable, "-m", "toolkit.evals", "run"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 2 and "dataset" in done.stderr  # argparse's own usage error
