"""A variant does what it says: every declared field, with a good and a bad value, through every entry point
(the CLI's --variant and --variants, a dataset's web_search, grid and evaluate, compare, the dashboard's
Evaluate tab, GraphQL). ``web_search=False`` is false wherever it is written; ``no`` is refused, naming the
variant, the field and the value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from toolkit.errors import InvalidRequest
from toolkit.evals import DatasetError, evaluate, grid, load_dataset
from toolkit.evals.cli import BadInput, main, parse_variant, read_variants
from toolkit.params import PARAMS
from toolkit.service import InferenceService
from toolkit.variants import boolean, typed

# each declared field: (a good value as text, what it means, a bad value as text)
NUMBERS: dict[str, tuple[str, Any, str]] = {}
for _name, _spec in PARAMS.items():
    if _spec.kind == "strings":
        NUMBERS[_name] = ('["END"]', ["END"], json.dumps(["a", "b", "c", "d", "e"]))
        continue
    _low = _spec.low if _spec.low is not None else 0
    _good = _low + 1 if _spec.kind == "int" or _spec.high is None else (_low + _spec.high) / 2
    _bad = str(_spec.high + 1) if _spec.high is not None and _spec.kind == "float" else "warm"
    NUMBERS[_name] = (str(_good), int(_good) if _spec.kind == "int" else float(_good), _bad)
FIELDS: dict[str, tuple[str, Any, str]] = {
    **NUMBERS,
    "web_search": ("False", False, "no"),
    "system_prompt": ("Answer briefly.", "Answer briefly.", ""),
    "timeout_s": ("30", 30.0, "-1"),
}


@pytest.mark.parametrize("text,meaning", [("true", True), ("TRUE", True), ("False", False), ("1", True), ("0", False)])
def test_a_boolean_is_true_or_false_in_any_case_or_one_or_zero(text: str, meaning: bool) -> None:
    assert boolean(text, "web_search") is meaning


@pytest.mark.parametrize("text", ["no", "off", "yes", "on", "2", "", "Falsey"])
def test_anything_else_is_refused_naming_the_value(text: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        typed({"web_search": text}, "variants[closed]")
    assert caught.value.field == "variants[closed].web_search" and repr(text) in caught.value.message


@pytest.mark.parametrize("name", list(FIELDS))
def test_every_field_on_the_command_line(name: str) -> None:
    good, meaning, bad = FIELDS[name]
    parsed = parse_variant(f"v:{name}={good}")
    assert parsed[name] == meaning and type(parsed[name]) is type(meaning)
    with pytest.raises(BadInput) as caught:
        parse_variant(f"v:{name}={bad}")
    said = str(caught.value)
    assert said.startswith(f"--variant v: {name}: ") and (bad in said or "at most" in said), said


def as_toml(text: str) -> str:
    """Numbers and lists as TOML values, anything else as a TOML string."""
    try:
        json.loads(text)
        return text
    except ValueError:
        return json.dumps(text)


@pytest.mark.parametrize("name", list(FIELDS))
def test_every_field_in_a_variants_file(name: str, tmp_path: Path) -> None:
    good, meaning, bad = FIELDS[name]
    toml = tmp_path / "v.toml"
    toml.write_text(f"[variants.v]\n{name} = {as_toml(good)}\n")
    assert read_variants(str(toml))[0][name] == meaning
    toml.write_text(f"[variants.v]\n{name} = {as_toml(bad)}\n")
    with pytest.raises(BadInput, match=rf"--variants {toml}: v: {name}: "):
        read_variants(str(toml))


def test_a_datasets_web_search_in_every_format(tmp_path: Path) -> None:
    files = {
        "a.jsonl": '{"input": "q", "target": "t", "web_search": "False"}\n',
        "a.csv": "input,target,web_search\nq,t,False\n",
        "a.yaml": "- input: q\n  target: t\n  web_search: 'False'\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        assert load_dataset(tmp_path / name).samples[0].web_search is False
        (tmp_path / name).write_text(text.replace("False", "no"))
        with pytest.raises(DatasetError, match=r"web_search: must be true or false \(or 1/0\), got 'no'"):
            load_dataset(tmp_path / name)


def test_grid_labels_read_back_as_what_they_say(service: InferenceService, tmp_path: Path) -> None:
    """The grid's own label, ``web_search=False``, copied to the command line, is a variant that does not search."""
    label = grid(web_search=[False, True])[0]["label"]
    assert label == "web_search=False" and parse_variant(f"closed:{label}")["web_search"] is False
    with pytest.raises(InvalidRequest, match=r"variants\[web_search=no\]\.web_search: must be true or false"):
        evaluate(service, [{"input": "q", "target": "t"}], grid(web_search=["no"]), store=False, progress=False)


def test_every_field_through_evaluate_and_compare(service: InferenceService) -> None:
    """Each good value reaches the request typed (its run record says so); each bad one is refused before any
    answer, naming the variant, the field and the value."""
    # text as a CSV or a form gives it; stop strings as a list (a string is one stop string)
    specs = [{"label": name, name: meaning if name == "stop" else good} for name, (good, meaning, _) in FIELDS.items()]
    for spec in specs:
        spec.setdefault("max_new_tokens", "1")
    run = evaluate(service, [{"id": "q", "input": "Say hi.", "target": "hi"}], specs, store=False, progress=False)
    for name, (_, meaning, _) in FIELDS.items():
        row = run.row("q", name)
        assert row is not None and row.scored, (name, row)
        record = row.record or {}
        seen = {**record["params"], "web_search": record["search"] is not None, "system_prompt": None}
        if name in PARAMS:
            assert seen[name] == meaning, name
        elif name == "web_search":
            assert seen["web_search"] is False
    for name, (_, _, bad) in FIELDS.items():
        spec = [{"label": "v", name: json.loads(bad) if name == "stop" else bad}]
        with pytest.raises(InvalidRequest) as caught:
            evaluate(service, [{"input": "q", "target": "t"}], spec, store=False)
        assert caught.value.field.startswith("variants[v].") and caught.value.field.endswith(name), name
        with pytest.raises(InvalidRequest) as caught:
            service.compare("q", spec)
        assert caught.value.field.startswith("variants[v].") and caught.value.field.endswith(name), name
    chosen = ["web_search", "temperature", "top_p", "min_p", "seed", "system_prompt", "timeout_s", "presence_penalty"]
    chunk = [{"label": name, name: FIELDS[name][0]} for name in chosen]
    comparison = service.compare("Say hi.", chunk, max_new_tokens=1)
    assert all(row.result is not None for row in comparison.rows)
    assert comparison["web_search"].result.search_status == "off"  # type: ignore[union-attr]


def test_the_command_line_refuses_a_bad_variant_before_the_model_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import toolkit.evals.cli as cli

    def no_model(url: Any) -> Any:
        raise AssertionError("the model was asked for before the input was checked")

    monkeypatch.setattr(cli, "_service", no_model)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"input": "q", "target": "t"}\n')
    code = main(["--store", str(tmp_path / "r.db"), "run", str(questions), "--variant", "closed:web_search=no"])
    assert (
        code == 2
        and "--variant closed: web_search: must be true or false (or 1/0), got 'no'" in capsys.readouterr().err
    )
    questions.write_text('{"input": "q", "expected": "t"}\n')
    code = main(["--store", str(tmp_path / "r.db"), "run", str(questions), "--variant", "closed:web_search=False"])
    assert code == 2 and "q.jsonl, line 1, expected: unknown key" in capsys.readouterr().err


def test_the_dashboards_variants_are_typed(service: InferenceService, tmp_path: Path) -> None:
    from dashboard.evaluate import EvaluateView

    name = service.registry.default.name
    view = EvaluateView(service, folder=tmp_path)
    view.start_from([(name, name)], name, "", False, 0.3)
    for fields in view.variants():
        assert typed({k: v for k, v in fields.items() if k != "label"}, "v") == {
            k: v for k, v in fields.items() if k != "label"
        }
    assert [f["web_search"] for f in view.variants()] == [False, True]
    (tmp_path / "bad.jsonl").write_text('{"input": "q", "target": "t", "web_search": "maybe"}\n')
    view.file.options = [("bad.jsonl", str(tmp_path / "bad.jsonl"))]
    view.file.value = str(tmp_path / "bad.jsonl")
    view.start()
    assert "web_search: must be true or false (or 1/0), got &#x27;maybe&#x27;" in view.status.value or (
        "got 'maybe'" in view.status.value
    )
