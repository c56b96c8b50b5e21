"""The wire forms derive from the dataclasses: the schema declares every field they send, and a round
trip through the wire gives the same dataclass back."""

from __future__ import annotations

import dataclasses

import pytest
from graphql import GraphQLObjectType

from server.resolvers import make_schema
from toolkit.results import (
    AdapterInfo,
    Health,
    InferResult,
    ModelHealth,
    ModelInfo,
    RunRecord,
    Source,
    Timings,
    Usage,
)
from toolkit.wire import camel, from_wire, selection, to_wire

SCHEMA_TYPES = {
    Health: "Health",
    ModelHealth: "ModelHealth",
    ModelInfo: "Model",
    AdapterInfo: "Adapter",
    InferResult: "InferResult",
    Usage: "Usage",
    Timings: "Timings",
    Source: "Source",
}


@pytest.mark.parametrize("cls", list(SCHEMA_TYPES))
def test_the_schema_declares_every_field_of_the_dataclass(cls: type) -> None:
    graphql_type = make_schema().type_map[SCHEMA_TYPES[cls]]
    assert isinstance(graphql_type, GraphQLObjectType)
    fields = {camel(f.name) for f in dataclasses.fields(cls)}
    assert fields <= set(graphql_type.fields), fields - set(graphql_type.fields)


def test_names_and_a_round_trip() -> None:
    assert camel("first_token_s") == "firstTokenSeconds" and camel("queue_depth") == "queueDepth"
    record = RunRecord(
        "r1",
        "2026-11-26T00:00:00+00:00",
        "m",
        "gguf",
        "sha256:x",
        None,
        "cpu",
        "float32",
        None,
        {"temperature": 0.0, "seed": 3},
        [{"role": "user", "content": "hi"}],
        "<prompt>",
        {"toolkit": "0.1.0"},
    )
    result = InferResult(
        "r1",
        "Paris.",
        "stop",
        Usage(5, 2),
        Timings(0.0, 0.1, 0.2),
        "m",
        None,
        record,
        (Source(1, "t", "docs://a.md", "s"),),
        "ok",
        None,
    )
    wire = to_wire(result)
    assert wire["finishReason"] == "STOP" and wire["searchStatus"] == "OK"
    assert wire["runRecord"]["prompt_text"] == "<prompt>"  # the run record travels in Python's names, as JSON
    assert from_wire(InferResult, wire) == result
    health = Health(
        "ready", "m", "cpu", "float32", None, 0, 0, 1.0, "0.1.0", None, (ModelHealth("m", "local", "ready"),)
    )
    assert from_wire(Health, to_wire(health)) == health
    assert "models { name engine status error since compiled }" in selection(Health)
