"""``python -m toolkit``: one streamed answer in the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_one_shot_answer(cache_dir: Path, first_load: object) -> None:
    out = run(["What is the capital of France?"], {"TOOLKIT_CACHE_DIR": str(cache_dir)})
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert "SmolLM2-135M-Instruct" in out.stderr and "[stop;" in out.stderr


def test_a_bad_setting_is_one_line_not_a_traceback(cache_dir: Path) -> None:
    out = run(["hi"], {"TOOLKIT_CACHE_DIR": str(cache_dir), "DTYPE": "fp7"})
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "error: DTYPE: must be one of" in out.stderr


def test_every_generation_parameter_is_an_option() -> None:
    """The options come from the declarations (as the magic's do): --min-p and the rest, not two by hand."""
    from toolkit.__main__ import make_parser
    from toolkit.params import PARAMS

    parser = make_parser()
    args = parser.parse_args(["hi", "--min-p", "0.05", "--top-k", "40", "--stop", "a", "--stop", "b"])
    assert (args.min_p, args.top_k, args.stop) == (0.05, 40, ["a", "b"])
    assert {a.dest for a in parser._actions} >= set(PARAMS)
