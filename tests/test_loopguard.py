"""The loop guard: a tail that is one span repeated ends an answer early (finish reason ``repetition``),
and legitimate repetition (a list, a table, code) does not trip it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from toolkit.loopguard import MIN_COPY_WORDS, MIN_SPAN_TOKENS, looping
from toolkit.service import InferenceService
from toolkit.settings import Settings


def test_a_run_of_one_token_needs_the_whole_span() -> None:
    assert looping([7] * (MIN_SPAN_TOKENS - 1)) == 0
    assert looping([1, 2, 3] + [7] * MIN_SPAN_TOKENS) == 1


def test_a_repeated_sentence_trips_at_its_fourth_turn() -> None:
    sentence = list(range(100, 125))  # 25 tokens
    assert looping([1, 2] + sentence * 3) == 0
    assert looping([1, 2] + sentence * 4) == 25


def test_lists_tables_and_code_do_not_trip_it() -> None:
    numbered = [t for i in range(1, 60) for t in (i, 13, 500 + i % 7, 10)]  # "1. item\\n2. item\\n": numbers differ
    table = [t for row in range(30) for t in (124, 900 + row, 124, 950 + row * 3, 124, 10)]
    code = [t for i in range(40) for t in (61, 62, 200 + i, 63, 10)]  # one line per i, each different
    assert looping(numbered) == looping(table) == looping(code) == 0


def test_text_for_engines_without_tokens() -> None:
    assert looping("la femme, " * 40, max_period=256, min_span=256) == len("la femme, ")
    assert looping("".join(f"{i}. item\n" for i in range(60)), max_period=256, min_span=256) == 0


@pytest.fixture(scope="module")
def looper(settings: Settings, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny model whose greedy answer cycles through three tokens forever: its layers add nothing (zero
    output projections), every token embeds as e0 except B (e1) and C (e2), and the output layer maps
    e0 -> B, e1 -> C, e2 -> A; so after the prompt it says B C A B C A ..."""
    from dataclasses import replace

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    a, b, c = (tokenizer.convert_tokens_to_ids(t) for t in ("la", "Ġfem", "me"))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        embed.zero_()
        embed[:, 0] = 1.0
        embed[b].zero_()
        embed[b, 1] = 1.0
        embed[c].zero_()
        embed[c, 2] = 1.0
        head = torch.zeros_like(model.lm_head.weight)
        head[b, 0], head[c, 1], head[a, 2] = 10.0, 10.0, 10.0
        model.lm_head.weight = torch.nn.Parameter(head)
        model.config.tie_word_embeddings = False
    folder = tmp_path_factory.mktemp("looper")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    svc = InferenceService(replace(settings, model_id=str(folder), search_provider="none")).start(progress=False)
    yield svc
    svc.close(grace_s=0)


def test_a_forced_loop_ends_early_with_repetition(looper: InferenceService) -> None:
    result = looper.infer("Hello", temperature=0, max_new_tokens=400)
    assert result.finish_reason == "repetition", result.text[:80]
    # it stopped as soon as a rule allows: the near-copy rule, before the period rule's 64 tokens
    assert result.usage.completion_tokens < MIN_SPAN_TOKENS
    assert result.run_record.finish_reason == "repetition"
    assert result.text and len(result.text) < len(result.run_record.raw_answer or "")  # the copies are cut off


def test_a_numbered_list_runs_on(service: InferenceService) -> None:
    result = service.infer("List the numbers from 1 to 50, one per line.", temperature=0, max_new_tokens=200)
    assert result.finish_reason in ("stop", "length") and result.usage.completion_tokens > MIN_SPAN_TOKENS


# ----- near copies (issue 23): a sentence or clause said again nearly word for word ---------------

from toolkit.loopguard import LoopGuard  # noqa: E402


def stream_through(text: str, step: int = 3) -> tuple[LoopGuard, str]:
    guard, shown = LoopGuard(), ""
    for i in range(0, len(text), step):
        shown += guard.push(text[i : i + step])
        if guard.loop:
            break
    shown += guard.finish()
    return guard, shown


BRIDGE = (
    "The X Bridge was designed by the structural engineer Y and was designed by the structural engineer Y "
    "and was designed by the structural engineer Y and was designed by the structural engineer Y. The bridge"
)


def test_a_clause_said_again_ends_the_answer_at_its_second_copy() -> None:
    guard, shown = stream_through(BRIDGE)
    assert guard.loop is not None and guard.loop.kind == "near_copy"
    assert guard.visible == "The X Bridge was designed by the structural engineer Y"  # no dangling "and"
    assert shown == guard.visible  # the stream never showed the copy
    assert guard.raw.count("was designed by") == 2  # it stopped inside the second copy, before a third


def test_a_near_copy_with_small_variations_is_caught_at_its_sentence() -> None:
    text = (
        "The bridge was designed by the engineer Oriel Vantage in 1994. "
        "The Harrowgate Bridge was designed by the engineer Oriel Vantage in 1994. The bridge was designed by"
    )
    guard, shown = stream_through(text)
    assert guard.visible == "The bridge was designed by the engineer Oriel Vantage in 1994." == shown


@pytest.mark.parametrize(
    "text",
    [
        "".join(f"{i}. Preheat the oven to {150 + i * 10} degrees for {i * 5} minutes.\n" for i in range(1, 15)),
        "| City | Country | People |\n|---|---|---|\n"
        + "".join(f"| City{i} | Land{i} | {i}.5 million |\n" for i in range(20)),
        "```python\n" + "print('hello world from the loop body')\n" * 6 + "```\nDone.",
        "The capital of France is Paris. The capital of France is also its largest city, with many museums.",
        "Step 1: Mix the flour and water in a bowl. Step 2: Mix the flour and sugar in another bowl. Step 3: Bake.",
    ],
    ids=["numbered list", "table", "code", "a repeated opening", "steps"],
)
def test_lists_tables_code_and_restatements_run_on(text: str) -> None:
    guard, shown = stream_through(text)
    assert guard.loop is None and shown == text == guard.visible


def test_text_is_held_back_only_a_few_words() -> None:
    guard, shown = LoopGuard(), ""
    text = "The quick brown fox jumps over the lazy dog and then runs far away into the woods."
    for ch in text:
        shown += guard.push(ch)
    assert text.startswith(shown) and len(text[len(shown) :].split()) <= 3
    assert shown + guard.finish() == text


def test_the_bridge_question_ends_after_its_first_sentence_or_does_not_loop(settings: Settings, loaded: Any) -> None:
    """The case a new user met (issue 23), on the bundled model with its own documents."""
    from toolkit.search import LocalDocsBackend, Searcher

    docs = Path(__file__).parent / "data" / "docs"
    svc = InferenceService(settings, loaded=loaded, searcher=Searcher(LocalDocsBackend(docs)))
    try:
        for question in (
            "Who designed this bridge, the Harrowgate Bridge, and when did it open?",
            "Who designed the Harrowgate Bridge?",
        ):
            result = svc.infer(question, web_search=True, max_new_tokens=120)
            # no copy left in the visible answer: no run of MIN_COPY_WORDS words said twice (the guard's rule; a
            # shorter echo, "He was a British engineer who ...", is the model's wording, which differs by host)
            words = result.text.lower().split()
            n = MIN_COPY_WORDS
            runs = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
            assert all(runs.count(r) < 2 for r in runs), result.text
            assert "Vantage" in result.text  # the answer's right part is there
            if result.finish_reason == "repetition":  # it ends where the copy began: the raw one goes on
                raw = result.run_record.raw_answer or ""
                assert raw.startswith(result.text) and len(raw) > len(result.text)
    finally:
        svc.close(grace_s=0)
