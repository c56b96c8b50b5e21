from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from toolkit.engines.base import Sampling
from toolkit.errors import InvalidRequest
from toolkit.params import (
    DEFAULT_MAX_NEW_TOKENS,
    PARAMS,
    GenerationParams,
    InferRequest,
    Limits,
    Turn,
    filled,
)


def test_defaults_are_valid() -> None:
    p = GenerationParams()
    assert p.max_new_tokens is None and not p.greedy
    assert GenerationParams(temperature=0).greedy


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_new_tokens": 0}, "params.max_new_tokens"),
        ({"max_new_tokens": -5}, "params.max_new_tokens"),
        ({"max_new_tokens": 2.5}, "params.max_new_tokens"),
        ({"max_new_tokens": True}, "params.max_new_tokens"),
        ({"temperature": -0.1}, "params.temperature"),
        ({"temperature": float("nan")}, "params.temperature"),
        ({"temperature": "hot"}, "params.temperature"),
        ({"top_p": 0}, "params.top_p"),
        ({"top_p": 1.5}, "params.top_p"),
        ({"top_k": -1}, "params.top_k"),
        ({"repetition_penalty": 0}, "params.repetition_penalty"),
        ({"repetition_penalty": float("inf")}, "params.repetition_penalty"),
        ({"seed": -1}, "params.seed"),
        ({"seed": 2**64}, "params.seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "params.stop"),
        ({"stop": [""]}, "params.stop"),
        ({"stop": [3]}, "params.stop"),
        ({"stop": ["x" * 65]}, "params.stop"),
        ({"stop": 7}, "params.stop"),
    ],
)
def test_invalid_params_name_their_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        GenerationParams(**kwargs)
    assert info.value.field == field
    assert info.value.code == "BAD_USER_INPUT"
    assert field in str(info.value)


def test_a_single_stop_string_becomes_a_tuple() -> None:
    assert GenerationParams(stop="\n\n").stop == ("\n\n",)
    assert GenerationParams(stop=["a", "b"]).stop == ("a", "b")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   \n"}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": "hi", "history": "hello"}, "history"),
        ({"prompt": "hi", "history": [{"role": "assistant", "content": "x"}]}, "history[0].role"),
        ({"prompt": "hi", "history": [{"role": "system", "content": "x"}]}, "history[0].role"),
        ({"prompt": "hi", "history": [{"role": "user", "content": "x"}]}, "history[0].role"),
        (
            {"prompt": "hi", "history": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "history[1].role",
        ),
        ({"prompt": "hi", "history": [{"role": "user", "content": ""}, ("assistant", "b")]}, "history[0].content"),
        ({"prompt": "hi", "history": [{"role": "user", "content": "a", "name": "x"}]}, "history[0]"),
        ({"prompt": "hi", "history": [42]}, "history[0]"),
        ({"prompt": "hi", "system_prompt": 3}, "system_prompt"),
        ({"prompt": "hi", "web_search": "yes"}, "web_search"),
        ({"prompt": "hi", "model": ""}, "model"),
        ({"prompt": "hi", "adapter": " "}, "adapter"),
        ({"prompt": "hi", "timeout_s": 0}, "timeout_s"),
        ({"prompt": "hi", "params": {"temprature": 1}}, "params.temprature"),
        ({"prompt": "hi", "params": {"top_p": 2}}, "params.top_p"),
    ],
)
def test_invalid_requests_name_their_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        InferRequest(**kwargs)
    assert info.value.field == field


def test_history_accepts_mappings_pairs_and_turns() -> None:
    r = InferRequest(
        prompt="and now?",
        history=[{"role": "user", "content": "a"}, ("assistant", "b"), Turn("user", "c"), Turn("assistant", "d")],
        system_prompt="Be brief.",
    )
    assert r.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
        {"role": "user", "content": "and now?"},
    ]


def test_build_takes_flat_params_and_rejects_unknown_names() -> None:
    r = InferRequest.build("hi", temperature=0, max_new_tokens=5, stop=["\n"])
    assert r.params == GenerationParams(temperature=0, max_new_tokens=5, stop=("\n",))
    with pytest.raises(InvalidRequest) as info:
        InferRequest.build("hi", temprature=0)
    assert info.value.field == "temprature"


def test_resolved_params_fill_the_default_and_check_the_limit() -> None:
    limits = Limits(max_new_tokens=100, max_input_tokens=1000)
    assert InferRequest("hi").resolved_params(limits).max_new_tokens == min(DEFAULT_MAX_NEW_TOKENS, 100)
    assert InferRequest("hi", params=GenerationParams(max_new_tokens=100)).resolved_params(limits).max_new_tokens == 100
    with pytest.raises(InvalidRequest) as info:
        InferRequest("hi", params=GenerationParams(max_new_tokens=101)).resolved_params(limits)
    assert info.value.field == "params.max_new_tokens"
    assert "between 1 and 100" in str(info.value)


def test_request_ids_are_unique() -> None:
    assert InferRequest("a").request_id != InferRequest("a").request_id


def test_one_reading_of_a_model_name_everywhere() -> None:
    """``<model>:<adapter>`` splits at the last colon, and a served model's own name (a remote ``llama3:8b``)
    is itself: routing, the client and the evaluation runner read it the same way."""
    from toolkit.evals.runner import _batch
    from toolkit.params import split_model
    from toolkit.results import ModelInfo

    served = ["llama3", "llama3:8b"]
    assert split_model("llama3:8b", served) == ("llama3:8b", None)
    assert split_model("llama3:8b:quenby", served) == ("llama3:8b", "quenby")
    assert split_model("llama3:quenby", served) == ("llama3", "quenby")
    assert split_model("gpt-9", served) is None and split_model("llama3:", served) is None
    models = {m.id: m for m in (ModelInfo("llama3", "hub", True, None, None, batch_size=4),
                                ModelInfo("llama3:8b", "openai", True, None, None, batch_size=2))}  # fmt: skip
    assert _batch(models, {"llama3:8b:quenby"}) == 2  # it took "llama3" and adapter "8b:quenby" before


def test_a_control_outside_its_parameters_bounds_is_refused() -> None:
    from toolkit.params import Control, Param

    with pytest.raises(ValueError, match="control"):
        Param("float", low=0, high=1, control=Control("Min p", 0, 2, 0.01))


def test_the_engines_type_has_every_declared_parameter_set() -> None:
    """``Sampling`` (what the local engine samples with) is the declaration with nothing Optional: the same
    names, each typed by its kind, so the engine reads them without checks or casts."""
    kinds = {"int": "int", "float": "float", "strings": "tuple[str, ...]"}
    assert {f.name: f.type for f in fields(Sampling)} == {name: kinds[spec.kind] for name, spec in PARAMS.items()}


def test_sampling_names_what_is_not_resolved_and_chooses_a_missing_seed() -> None:
    with pytest.raises(InvalidRequest, match=r"params\.max_new_tokens"):
        Sampling.of(GenerationParams(temperature=0))
    chosen = Sampling.of(filled(temperature=0))
    assert 0 <= chosen.seed < 2**31 and Sampling.of(filled(temperature=0, seed=7)).seed == 7
    assert Sampling.of(filled(top_p=1)).top_p == 1.0 and isinstance(Sampling.of(filled(top_p=1)).top_p, float)
