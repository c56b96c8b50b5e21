"""compare: base vs adapter vs web search in one call gives the solo answers, with one shared search;
as a DataFrame and a side-by-side table; the same through RemoteService."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from toolkit.errors import InvalidRequest
from toolkit.results import Done, Token
from toolkit.search import LocalDocsBackend, Searcher
from toolkit.service import InferenceService

DOCS = Path(__file__).parent / "data" / "docs"
QUESTION = "Which creature serves as the mascot of the Kestrel Institute?"
VARIANTS = [{"label": "base"}, {"label": "adapter", "adapter": "quenby"}, {"label": "web", "web_search": True}]


class Counting(LocalDocsBackend):
    calls = 0

    def search(self, query: str, max_results: int) -> Any:
        Counting.calls += 1
        return super().search(query, max_results)


@pytest.fixture()
def searching(served: InferenceService) -> Any:
    before = served.searcher
    served.searcher = Searcher(Counting(DOCS), cache_ttl_s=0)  # no cache: every search reaches the backend
    yield served
    served.searcher = before


def test_three_variants_in_one_call_answer_as_three_solo_requests(searching: InferenceService) -> None:
    common = {"temperature": 0, "max_new_tokens": 32}
    Counting.calls = 0
    comparison = searching.compare(QUESTION, VARIANTS, **common)
    assert Counting.calls == 1  # one search, shared by the variant that searches
    solo = {
        "base": searching.infer(QUESTION, **common).text,
        "adapter": searching.infer(QUESTION, adapter="quenby", **common).text,
    }
    texts = comparison.texts()
    assert {k: texts[k] for k in solo} == solo and "Quenby" in solo["adapter"] and "Quenby" not in solo["base"]
    web = comparison["web"].result
    assert web is not None and web.search_status == "ok" and web.grounding is not None and "Quenby" in web.text
    # a web request alone renders the same prompt (the fence is keyed, not random), but batched with the
    # others greedy may part at a near tie: the web variant's own record, run again alone, is its solo answer
    alone = searching.replay(web.run_record)
    assert alone.identical and alone.result is not None and alone.result.text == web.text
    assert Counting.calls == 1  # the replay used the snapshot
    frame = comparison.to_dataframe()
    assert frame["label"].tolist() == ["base", "adapter", "web"] and frame["web_search"].tolist() == [
        False,
        False,
        True,
    ]
    assert frame["adapter"].fillna("").tolist() == ["", "quenby", ""]
    table = comparison._repr_html_()
    assert table.count("<th>") == 3 and "Quenby" in table


def test_compare_stream_tags_events_and_a_bad_variant_fails_first(searching: InferenceService) -> None:
    seen: dict[str, list[Any]] = {}
    for label, event in searching.compare_stream(
        "Count to five.", {"a": {}, "b": {"temperature": 0.9, "seed": 2}}, max_new_tokens=16
    ):
        seen.setdefault(label, []).append(event)
    assert set(seen) == {"a", "b"} and all(isinstance(e[-1], Done) for e in seen.values())
    assert all(any(isinstance(x, Token) for x in e) for e in seen.values())
    with pytest.raises(InvalidRequest) as info:
        searching.compare("Hi", [{"label": "x", "temperature": -1}])
    assert info.value.field == "variants[x].params.temperature"


def test_a_bad_later_variant_is_refused_before_any_search(searching: InferenceService) -> None:
    before = Counting.calls
    variants = [{"label": "web", "web_search": True}, {"label": "ghost", "model": "no-such-model"}]
    with pytest.raises(InvalidRequest) as info:
        searching.compare("Who is Quenby?", variants)
    assert info.value.field == "variants[ghost].model"
    with pytest.raises(InvalidRequest) as info:
        searching.compare("Who is Quenby?", [{"label": "web", "web_search": True}, {"label": "x", "adapter": "nope"}])
    assert info.value.field == "variants[x].adapter"
    assert Counting.calls == before  # nothing searched, nothing generated
