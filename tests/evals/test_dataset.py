"""Datasets: JSONL, CSV and YAML (promptfoo's test files too) load to the same samples; every problem is
caught at load, naming the file, the line (or row) and the field."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from toolkit.evals import DatasetError, dataset, load_dataset, loading
from toolkit.evals.assertions import parse_check

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


# ----- bounds: no file can hang or exhaust what loads it ------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    """A "billion laughs" mapping: nine strings, then each level nine aliases of the one before (9**9 values
    when expanded, from a few hundred bytes)."""
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    lines = ['    a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"    {b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in itertools.pairwise(names)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_as_it_is_read_naming_the_limit(tmp_path: Path) -> None:
    bomb = alias_bomb()
    text = "- input: Hi\n  target: hello\n  metadata:\n" + bomb
    assert len(text.encode()) < 1000
    with pytest.raises(DatasetError) as caught:
        load_dataset(write(tmp_path, "laughs.yaml", text))
    error = caught.value
    # refused at the first alias over the bound (the first *f, on the line of g: 1.27 million values in all)
    assert (error.source, error.line, error.where) == ("laughs.yaml", 10, "file")
    assert "aliases expand to more than 1,000,000 values (MAX_ALIASED_VALUES)" in error.message
    # the same mapping at the top of the file (the shape) too: it is refused before its shape is
    top = "".join(line.removeprefix("    ") + "\n" for line in bomb.splitlines())
    with pytest.raises(DatasetError, match=r"laughs.yaml, line 7, file: its aliases expand to more than"):
        load_dataset(write(tmp_path, "laughs.yaml", top))


def test_a_recursive_alias_and_deep_nesting_are_refused_naming_the_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"a.yaml, line 3, file: the alias \*m is inside what it names"):
        load_dataset(write(tmp_path, "a.yaml", "- input: Hi\n  target: k\n  metadata: &m {again: [*m]}\n"))
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(DatasetError, match=r"a.yaml, line 3, file: nests more than 64 levels deep \(MAX_DEPTH\)"):
        load_dataset(write(tmp_path, "a.yaml", f"- input: Hi\n  target: k\n  metadata: {{m: {deep}}}\n"))
    line = json.dumps({"input": "Hi", "target": "k"})
    for depth, where in ((100, "sample"), (5000, "line")):  # JSON's own parser, or the sample's check
        text = line + "\n" + line[:-1] + f', "metadata": {{"m": {"[" * depth + "]" * depth}}}}}\n'
        with pytest.raises(DatasetError, match=rf"a.jsonl, line 2, {where}: nests more than 64 levels deep"):
            load_dataset(write(tmp_path, "a.jsonl", text))
    with pytest.raises(DatasetError, match="nests more than 64 levels"):
        nested: dict[str, object] = {}
        nested["self"] = nested  # a cycle, in a notebook's dicts
        dataset([{"input": "Hi", "target": "k", "metadata": nested}])


def test_anchors_that_share_assert_lists_still_load(tmp_path: Path) -> None:
    data = load_dataset(
        write(
            tmp_path,
            "shared.yaml",
            "checks: &polite\n"
            "  - &sorry {type: not-icontains, value: sorry}\n"
            "  - {type: no-loop}\n"
            "tests:\n"
            "  - input: Capital of France?\n"
            "    metadata: &geo {topic: geography}\n"
            "    assert: [{type: icontains, value: Paris}, *sorry]\n"
            "  - input: Capital of Italy?\n"
            "    metadata: *geo\n"
            "    assert: *polite\n"
            "  - input: Capital of Spain?\n"
            "    metadata: {<<: *geo, region: south}\n"
            "    assert: *polite\n",
        )
    )
    polite = (parse_check({"type": "not-icontains", "value": "sorry"}), parse_check({"type": "no-loop"}))
    assert [s.checks for s in data.samples] == [
        (parse_check({"type": "icontains", "value": "Paris"}), polite[0]),
        polite,
        polite,
    ]
    assert [s.metadata for s in data.samples] == [{"topic": "geography"}] * 2 + [
        {"topic": "geography", "region": "south"}
    ]
    assert len(data.hash) == 16


def test_a_file_over_the_size_bound_is_refused_before_it_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert loading.MAX_DATASET_BYTES == 32 * 2**20
    monkeypatch.setattr(loading, "MAX_DATASET_BYTES", 1000)
    line = '{"input": "Hi", "target": "hello"}\n'  # 35 bytes
    fits = write(tmp_path, "fits.jsonl", line * 28)  # 980 bytes
    assert len(load_dataset(fits)) == 28
    big = write(tmp_path, "big.jsonl", line * 28 + "{not JSON at all, and past the bound\n")
    with pytest.raises(DatasetError) as caught:
        load_dataset(big)
    assert caught.value.message == (
        "big.jsonl, file: is larger than 1,000 bytes (MAX_DATASET_BYTES), the most a dataset file may have: "
        "split it into smaller files"
    )  # the size, not the broken last line: it was never parsed


def test_more_samples_than_the_bound_are_refused_in_every_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert loading.MAX_SAMPLES == 100_000
    monkeypatch.setattr(loading, "MAX_SAMPLES", 3)
    rows = [{"input": f"Question {i}?", "target": str(i)} for i in range(4)]
    files = {
        "four.jsonl": ("".join(json.dumps(r) + "\n" for r in rows), 4),
        "four.csv": ("input,target\n" + "".join(f"{r['input']},{r['target']}\n" for r in rows), 5),
        "four.yaml": ("".join(f"- input: {r['input']}\n  target: '{r['target']}'\n" for r in rows), 7),
    }
    for name, (text, line) in files.items():
        with pytest.raises(DatasetError) as caught:
            load_dataset(write(tmp_path, name, text))
        assert (caught.value.line, caught.value.where) == (line, "sample"), caught.value.message
        assert "more than 3 samples (MAX_SAMPLES)" in caught.value.message
        three = text.rsplit("\n", 3 if name.endswith("yaml") else 2)[0] + "\n"  # the last sample left out
        assert len(load_dataset(write(tmp_path, name, three))) == 3
    with pytest.raises(DatasetError, match=r"inline, line 4, sample: more than 3 samples \(MAX_SAMPLES\)"):
        dataset(iter(rows))
    assert len(dataset(rows[:3])) == 3


def test_the_dashboards_upload_is_bounded_by_the_same_loader(
    service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload over the size bound is refused before it is written or parsed; an alias bomb uploaded is
    refused by the loader a notebook and the CLI use."""
    from datetime import UTC, datetime

    from dashboard.evaluate import EvaluateView

    monkeypatch.setattr(loading, "MAX_DATASET_BYTES", 1000)
    view = EvaluateView(service, folder=tmp_path)

    def upload(name: str, content: bytes) -> None:
        item = {"name": name, "type": "", "size": 1, "content": memoryview(content), "last_modified": datetime.now(UTC)}
        view.upload.value = (item,)
        view.start()

    upload("big.jsonl", b'{"input": "Hi", "target": "hello"}\n' * 30)
    assert "big.jsonl, file: is larger than 1,000 bytes (MAX_DATASET_BYTES)" in view.status.value
    assert not view.busy and not any(Path(view._uploads.name).iterdir())  # never written
    upload("laughs.yaml", ("- input: Hi\n  target: hello\n  metadata:\n" + alias_bomb()).encode())
    assert "laughs.yaml, line 10, file: its aliases expand to more than 1,000,000 values" in view.status.value
    assert not view.busy and view.run is None
