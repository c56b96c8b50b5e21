"""python -m toolkit.evals against a real server: the summary table, --json, list/show/diff, and the exit
codes CI relies on (0 passed, 1 under --fail-under or broken against --baseline, 2 bad input or nothing could
run, 3 error cells, 130 interrupted by Ctrl-C or SIGTERM)."""

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
    page = tmp_path / "report.html"
    code, out, _ = cli(capsys, "--store", store, "report", planted, "-o", page, "--baseline", baseline)
    assert code == 0 and f"{len(grounded)} broken" in page.read_text() and "<svg" in page.read_text()
    code, _, err = cli(capsys, "--store", store, "report", planted, "-o", page, "--diff", "v", "w")
    assert code == 2 and "--diff: run" in err and "has no variant 'w'" in err
    code, out, _ = cli(capsys, "--store", store, "delete", planted)
    assert code == 0
    code, _, err = cli(capsys, "--store", store, "show", planted)
    assert code == 2 and f"no evaluation run '{planted}'" in err


@pytest.mark.parametrize(
    "args,words",
    [
        (["--variant", "no-colon"], "give NAME:key=value"),
        (["--variant", "v:temperature"], "is not key=value"),
        (["--variant", "v:temperature=-3"], "--variant v: temperature: must be >= 0"),
        (["--variant", "v:web_search=no"], "--variant v: web_search: must be true or false (or 1/0), got 'no'"),
        (["--variant", "v:model=gpt-9"], "variant v: model: "),
        (["--variant", "v:adapter=nope"], "variant v: adapter: "),
        (["--fail-under", "7"], "--fail-under must be a rate"),
        (["--baseline", "no-such-run"], "no evaluation run 'no-such-run' in the store; list them with: python -m"),
        (["--resume", "no-such-run"], "no evaluation run 'no-such-run'"),
        (["--variants", "missing.toml"], "cannot read it"),
        (["--filter", "nothing-matches"], "--filter nothing-matches: no sample id matches"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["-j", "0"], "-j/--concurrency must be >= 1"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str], url: str, questions: Path, tmp_path: Path, args: list[str], words: str
) -> None:
    code, out, err = cli(capsys, "--store", tmp_path / "runs.db", "run", questions, "--url", url, "--quiet", *args)
    assert code == 2 and words in err and "Traceback" not in err + out and "runs()" not in err, err


def test_a_bad_dataset_exits_2_naming_file_line_and_field(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "ok", "target": "k"}\n{"input": "x", "assert": [{"type": "sounds-like"}]}\n')
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


def test_error_cells_are_not_failures_and_have_an_exit_code_of_their_own(
    capsys: pytest.CaptureFixture[str], url: str, questions: Path, tmp_path: Path
) -> None:
    """A timed-out answer is an error cell: apart in the table and the JSON, in no rate, exit 3 unless
    --max-errors allows it, 2 when every cell is one; --resume asks them again."""
    store, out_json = tmp_path / "runs.db", tmp_path / "out.json"
    common = ["--store", store, "run", questions, "--url", url, "--quiet", "--filter", "grounded-0[1-3]"]
    late = f"late:{GREEDY},timeout_s=0.001"  # no answer can start within a millisecond
    code, out, err = cli(capsys, *common, "--variant", f"ok:{GREEDY}", "--variant", late, "--json", out_json)
    assert code == 3 and "3 cell(s) have no verdict (allowed: 0; --max-errors N allows more)" in err, err
    assert "TIMEOUT: the answer ran out of time" in err and "--resume" in err
    assert "3 error cell(s), not counted in any rate (TIMEOUT 3)" in out and "grounded-01 / late: the answer ran" in out
    assert "ok -> late: 0 paired answers" in out and "3 pair(s) left out" in out  # two variants: their diff
    report = json.loads(out_json.read_text())
    summary = {v["name"]: v for v in report["variants"]}
    assert (summary["late"]["n"], summary["late"]["errors"], summary["late"]["pass_rate"]) == (0, 3, None)
    assert (summary["ok"]["n"], summary["ok"]["errors"]) == (3, 0) and report["errors"] == 3
    rows = [r for r in report["rows"] if r["variant"] == "late"]
    assert all(r["error_code"] == "TIMEOUT" and r["pass"] is None for r in rows)
    first = {r["sample_id"]: r["record_id"] for r in rows}
    code, out, err = cli(capsys, *common, "--variant", f"ok:{GREEDY}", "--variant", late, "--max-errors", "3")
    assert code == 0, err
    code, _, err = cli(capsys, *common, "--variant", late)
    assert code == 2 and "nothing could run: all 3 cells are errors" in err
    # --resume asks the error cells again (and only them: the others are kept)
    code, out, err = cli(
        capsys,
        *common,
        "--variant",
        f"ok:{GREEDY}",
        "--variant",
        late,
        "--resume",
        report["run_id"],
        "--json",
        out_json,
    )
    again = json.loads(out_json.read_text())
    assert code == 3 and again["run_id"] == report["run_id"]
    asked = {r["sample_id"]: r["record_id"] for r in again["rows"] if r["variant"] == "late"}
    assert asked.keys() == first.keys() and not set(asked.values()) & set(first.values())


def test_a_cached_rerun_says_so_and_a_small_set_says_it_cannot_tell(
    capsys: pytest.CaptureFixture[str], url: str, questions: Path, tmp_path: Path
) -> None:
    store, out_json = tmp_path / "runs.db", tmp_path / "out.json"
    common = ["--store", store, "run", questions, "--url", url, "--quiet", "--limit", "3", "-j", "2"]
    code, out, _ = cli(capsys, *common, "--variant", f"v:{GREEDY}", "--json", out_json)
    assert code == 0 and "from the store" not in out
    assert "Too small to tell: 3 scored questions per variant" in out
    first = json.loads(out_json.read_text())["run_id"]
    code, out, _ = cli(capsys, *common, "--variant", f"v:{GREEDY}", "--baseline", first)
    assert code == 0 and "3 of 3 cells came from the store" in out and "p50 s*" in out
    assert "WARNING: --baseline cannot detect a regression here: 3 pairs cannot show a significant change" in out


def test_sigterm_marks_the_run_interrupted_as_ctrl_c_does(url: str, questions: Path, tmp_path: Path) -> None:
    import signal
    import sqlite3
    import time

    store = tmp_path / "runs.db"
    command = [sys.executable, "-m", "toolkit.evals", "--store", str(store), "run", str(questions), "--url", url]
    slow = "v:temperature=0,max_new_tokens=400"
    child = subprocess.Popen(
        [*command, "--variant", slow, "-j", "1", "--quiet"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    cells = 0
    while time.monotonic() < deadline and cells == 0 and child.poll() is None:  # until the first cell is kept
        time.sleep(0.1)
        if store.exists():
            try:
                with sqlite3.connect(store) as db:
                    cells = db.execute("SELECT COUNT(*) FROM eval_cells").fetchone()[0]
            except sqlite3.Error:
                cells = 0
    assert cells, "no cell was kept"
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130 and "interrupted" in err and "--resume" in err, out + err
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT status FROM eval_runs").fetchone()[0] == "interrupted"


def test_ctrl_c_while_a_check_runs_exits_130_and_marks_the_run_interrupted(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT reaches the main thread while a cell's regex check runs in a worker (one that backtracks without
    end: Python's ``re`` held the GIL through it, and the run could not be stopped): the run stops, keeps the
    cell before, and is interrupted in the store."""
    import signal
    import sqlite3
    import threading

    from toolkit.evals import assertions, runner

    monkeypatch.setattr(assertions, "REGEX_TIMEOUT_S", 1.0)  # the most that check runs
    runaway = r"(?s)^(?:.|.(?=.))*$(?<!.)"  # no match, tried 2**n ways
    path = tmp_path / "slow.jsonl"
    path.write_text(
        json.dumps({"id": "first", "input": "What is the capital of France?", "target": "Paris"})
        + "\n"
        + "".join(
            json.dumps({"id": i, "input": "Describe Paris.", "assert": [{"type": "regex", "value": runaway}]}) + "\n"
            for i in ("second", "third")
        )
    )
    real, checking = runner.score, threading.Event()

    def score(check: Any, answer: Any, question: str, judge: Any = None, metric: Any = None) -> Any:
        if check.type == "regex":
            checking.set()
        return real(check, answer, question, judge, metric)

    monkeypatch.setattr(runner, "score", score)

    def press_ctrl_c() -> None:
        if checking.wait(timeout=300):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    store = tmp_path / "runs.db"
    variant = "v:temperature=0,max_new_tokens=40"
    code, _, err = cli(capsys, "--store", store, "run", path, "--url", url, "--variant", variant, "-j", "1", "--quiet")
    presser.join(timeout=60)
    assert code == 130 and "interrupted: 1 cells kept; resume with --resume" in err, err
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT status FROM eval_runs").fetchone()[0] == "interrupted"
        assert [r[0] for r in db.execute("SELECT sample_id FROM eval_cells")] == ["first"]
