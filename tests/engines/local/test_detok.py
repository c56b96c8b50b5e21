from __future__ import annotations

from typing import Any

import pytest

from toolkit.engines.local.detok import TextStream


def run(tokenizer: Any, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    stream = TextStream(tokenizer, stop)
    deltas = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        delta = stream.push(token)
        if delta:
            deltas.append(delta)
        if stream.stopped:
            break
    tail = stream.finish()
    if tail:
        deltas.append(tail)
    return deltas, stream


def test_multibyte_characters_are_never_split(tokenizer: Any) -> None:
    text = "Party 🎉🎉 at the café, 東京 — naïve façade 👩‍👩‍👧!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # the emoji take several byte-level tokens each: a naive per-token decode would show U+FFFD
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    deltas, stream = run(tokenizer, text)
    assert "".join(deltas) == text == stream.emitted
    assert all("\ufffd" not in d for d in deltas)


def test_stop_string_across_tokens_is_cut_and_never_shown(tokenizer: Any) -> None:
    deltas, stream = run(tokenizer, "one two three END of story", stop=("END",))
    assert stream.stopped
    assert "".join(deltas) == "one two three "
    assert not any("E" in d for d in deltas)


def test_first_of_several_stop_strings_wins(tokenizer: Any) -> None:
    deltas, _ = run(tokenizer, "alpha\n\nbeta ### gamma", stop=("###", "\n\n"))
    assert "".join(deltas) == "alpha"


@pytest.mark.parametrize("text", ["a partial ST", "ends with S"])
def test_text_held_for_a_possible_stop_is_released_at_the_end(tokenizer: Any, text: str) -> None:
    deltas, stream = run(tokenizer, text, stop=("STOP",))
    assert not stream.stopped
    assert "".join(deltas) == text


def test_a_partial_character_never_lets_a_stop_prefix_out(tokenizer: Any) -> None:
    """The tail held for a stop string is measured on what can be shown, before a partial character."""
    text = "xab🎉yz"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tokenizer.decode(ids[: i + 1]) for i in range(len(ids)))  # 🎉 spans three tokens
    deltas, stream = run(tokenizer, text, stop=("ab🎉",))
    assert stream.stopped and "".join(deltas) == stream.emitted == "x"


def test_each_token_decodes_a_short_window_not_the_whole_answer(tokenizer: Any) -> None:
    """Linear, not quadratic: the tokens decoded per push stay small however long the answer grows."""

    class Counting:
        def __init__(self) -> None:
            self.decoded: list[int] = []

        def decode(self, ids: list[int], **kwargs: Any) -> str:
            self.decoded.append(len(ids))
            return str(tokenizer.decode(ids, **kwargs))

    counting = Counting()
    text = " ".join(f"word{i} 🎉 café" for i in range(300))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(counting, ("STOP!",))
    deltas = [stream.push(t) for t in ids]
    assert "".join(deltas) + stream.finish() == text
    assert len(ids) > 1000 and max(counting.decoded) <= 8  # never the whole answer
