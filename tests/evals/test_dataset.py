"""Datasets: JSONL, CSV and YAML (promptfoo's test files too) load to the same samples; every problem is
caught at load, naming the file, the line (or row) and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.evals import DatasetError, dataset, load_dataset

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_three_formats_give_the_same_samples(tmp_path: Path) -> None:
    jsonl = write(
        tmp_path,
        "qs.jsonl",
        '{"id": "fr", "input": "Capital of France?", "assert": [{"type": "icontains", "value": "Paris"}]}\n'
        "\n"
        '{"prompt": "Capital of Italy?", "target": "Rome"}\n',
    )
    csv = write(
        tmp_path,
        "qs.csv",
        "id,input,target,__expected\nfr,Capital of France?,,icontains: Paris\n,Capital of Italy?,Rome,\n",
    )
    yaml = write(
        tmp_path,
        "qs.yaml",
        "tests:\n"
        "  - description: fr\n    vars: {input: 'Capital of France?'}\n    assert: [{type: icontains, value: Paris}]\n"
        "  - vars: {prompt: 'Capital of Italy?'}\n    target: Rome\n",
    )
    loaded = [load_dataset(p) for p in (jsonl, csv, yaml)]
    first = loaded[0].samples
    assert [s.id for s in first] == ["fr", "3"]  # the second's id: its line number
    assert first[1].checks[0].type == "icontains" and first[1].checks[0].value == "Rome"  # target only
    for other in loaded[1:]:
        head = other.samples[0]
        assert (head.input, [c.to_dict() for c in head.checks]) == (
            "Capital of France?",
            [{"type": "icontains", "value": "Paris"}],
        )
    assert loaded[0].samples[0] == loaded[2].samples[0]
    assert loaded[0].hash == dataset([s.to_dict() for s in first]).hash  # a sample's dict is its file shape


def test_the_shipped_example_set_loads() -> None:
    data = load_dataset(ROOT / "evals" / "examples" / "quality.yaml")
    assert len(data) == 45 and sum(bool(s.web_search) for s in data.samples) == 11
    quick = data[::4]  # a slice is a dataset of its own (the notebook's quick look)
    assert len(quick) == 12 and quick.samples[1] == data.samples[4] and quick.hash != data.hash
    with pytest.raises(TypeError, match="slice"):
        data[3]  # type: ignore[index]


@pytest.mark.parametrize(
    "name,text,line,field,words",
    [
        ("a.jsonl", '{"input": "ok", "target": "k"}\n{"input": "broken"\n', 2, "line", "not a JSON object"),
        ("a.jsonl", '{"input": "ok", "target": "k"}\n["a list"]\n', 2, "line", "JSON object"),
        ("a.jsonl", '{"input": "ok", "target": "k"}\n\n{"input": ""}\n', 3, "input", "non-empty string"),
        (
            "a.jsonl",
            '{"input": "x", "assert": [{"type": "sounds-like", "value": "x"}]}\n',
            1,
            "assert[0].type",
            "known: equals",
        ),
        (
            "a.jsonl",
            '{"input": "x", "assert": [{"type": "regex", "value": "(x"}]}\n',
            1,
            "assert[0].value",
            "regular expression",
        ),
        (
            "a.jsonl",
            '{"input": "x", "assert": [{"type": "llm-rubric", "value": "kind", "judge": "gpt-9"}]}\n',
            1,
            "assert[0].judge",
            "not a configured model",
        ),
        (
            "a.jsonl",
            '{"id": 1, "input": "x", "target": "k"}\n{"id": 1, "input": "y", "target": "k"}\n',
            2,
            "id",
            "used twice",
        ),
        (
            "a.jsonl",
            '{"input": "x", "history": [{"role": "assistant", "content": "hi"}]}\n',
            1,
            "history[0].role",
            "user",
        ),
        ("a.jsonl", '{"input": "x", "web_search": "yes", "target": "k"}\n', 1, "web_search", "true or false"),
        ("a.csv", "input,target,assert\nok,k,\nx,,[{broken\n", 3, "assert", "must be JSON"),
        ("a.csv", "input,__expected\nx,sounds-like: y\n", 2, "assert[0].type", "unknown assertion type"),
        ("a.yaml", "- input: x\n  target: k\n- input: [1, 2]\n", 3, "input", "non-empty string"),
        ("a.yaml", "- input: x\n  assert: {type: equals}\n", 2, "assert", "list of checks"),
        ("a.yaml", "tests: [\n", 2, "file", "not valid YAML"),
        # a sample says exactly what it means or is refused
        ("a.jsonl", '{"input": "Who?", "expected": "Zebedee"}\n', 1, "expected", "'target'"),
        ("a.jsonl", '{"input": "Who?", "asserts": [{"type": "contains", "value": "Z"}]}\n', 1, "asserts", "'assert'"),
        ("a.jsonl", '{"input": "Who?"}\n', 1, "assert", "nothing to check"),
        ("a.jsonl", '{"input": "Who?", "assert": []}\n', 1, "assert", "nothing to check"),
        ("a.csv", "question,answer\nWho?,Zebedee\n", 1, "answer", "accepted: id, input"),
        ("a.csv", "input,target,colour\nWho?,Z,red\n", 1, "colour", "unknown column"),
        ("a.csv", "input,target,web_search\nWho?,Z,no\n", 2, "web_search", "true or false"),
        ("a.yaml", "- input: x\n  target: k\n  wieght: 2\n", 3, "wieght", "did you mean 'weight'?"),
        ("a.yaml", "- vars: {topic: moss}\n  target: k\n", 1, "vars.topic", "no prompt templates"),
        (
            "a.yaml",
            "- input: x\n  target: k\n  options: {transform: output.upper()}\n",
            3,
            "options.transform",
            "not supported",
        ),
        ("a.yaml", "- input: x\n  target: k\n  weight: -1\n", 3, "weight", ">= 0"),
        ("a.yaml", "- input: x\n  target: k\n  threshold: 2\n", 3, "threshold", "between 0 and 1"),
        (
            "a.yaml",
            "- input: x\n  assert:\n    - type: contains\n      value: y\n      weight: 0\n",
            2,
            "assert",
            "weight 0",
        ),
        (
            "a.yaml",
            "- input: x\n  assert:\n    - type: is-json\n      value: {type: object}\n",
            4,
            "assert[0].value",
            "would not be checked",
        ),
        (
            "a.yaml",
            "- input: x\n  assert:\n    - type: contains\n      value: y\n      provider: gpt-9\n",
            5,
            "assert[0].provider",
            "only llm-rubric",
        ),
        ("a.yaml", "- input: x\n  prompt: y\n  target: k\n", 2, "prompt", "give the question once"),
        ("a.txt", "input\n", None, "file", ".jsonl, .csv or .yaml"),
        ("a.jsonl", "\n", None, "file", "no samples"),
    ],
)
def test_a_bad_dataset_names_file_line_and_field(
    tmp_path: Path, name: str, text: str, line: int | None, field: str, words: str
) -> None:
    with pytest.raises(DatasetError) as caught:
        load_dataset(write(tmp_path, name, text), models=["smollm2"])
    error = caught.value
    assert (error.source, error.line, error.where) == (name, line, field)
    place = f"{name}, line {line}, {field}: " if line is not None else f"{name}, {field}: "
    assert error.message.startswith(place) and words in error.message, error.message


def test_a_file_that_is_not_there_or_not_text(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read it"):
        load_dataset(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(json.dumps({"input": "caf\u00e9"}).encode("utf-8")[:-3] + b'\xe9"}')
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_dataset(tmp_path / "latin1.jsonl")


def test_promptfoos_keys_are_accepted_and_weight_metric_threshold_kept(tmp_path: Path) -> None:
    data = load_dataset(
        write(
            tmp_path,
            "qs.yaml",
            "tests:\n"
            "  - description: capital of France\n"
            "    vars: {input: 'Capital of France?'}\n"
            "    options: {runSerially: true}\n"
            "    metadata: {topic: geography}\n"
            "    weight: 2\n"
            "    metric: geography\n"
            "    threshold: 0.5\n"
            "    assert:\n"
            "      - {type: icontains, value: Paris, weight: 3}\n"
            "      - {type: icontains, value: Seine, metric: rivers, weight: 0}\n",
        )
    )
    sample = data.samples[0]
    assert (sample.id, sample.input, sample.weight, sample.metric, sample.threshold) == (
        "capital of France",
        "Capital of France?",
        2.0,
        "geography",
        0.5,
    )
    assert [(c.weight, c.metric) for c in sample.checks] == [(3.0, None), (0.0, "rivers")]
    assert dataset([sample.to_dict()]).samples[0] == sample  # the file shape keeps all of it


def test_a_csv_with_promptfoos_columns(tmp_path: Path) -> None:
    data = load_dataset(
        write(
            tmp_path,
            "qs.csv",
            "question,__expected,__metric,weight,web_search\nCapital of France?,icontains: Paris,geo,2,FALSE\n",
        )
    )
    sample = data.samples[0]
    assert (sample.input, sample.metric, sample.weight, sample.web_search) == ("Capital of France?", "geo", 2.0, False)
