"""The decode step compiled in the background (``toolkit/engines/local/compiled.py``), with LoRA adapters inside
it (``rowlora.py``), on a small model built from a config: the compile takes seconds, not the bundled model's
minutes. One compiled engine serves the module's tests, in order (the last one breaks its compiled step)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from toolkit.engines.local.compiled import SHAPES, CompiledStep
from toolkit.engines.local.engine import Finished, Scheduler
from toolkit.engines.local.lorastack import LoraStack
from toolkit.errors import InvalidRequest
from toolkit.params import filled

GREEDY = filled(temperature=0, max_new_tokens=12)
pytestmark = pytest.mark.xdist_group("compiled")  # one worker builds the compiled engine
PROMPTS = ["Hello there", "The harbour at night", "Lanterns and boats", "A short story about the sea"]


def tiny_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Any:
    return tiny_model(tiny_model_dir)


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path, loaded: Any) -> Iterator[tuple[Scheduler, Scheduler]]:
    """An eager engine and a compiled one (a model each: the compiled one's layers are wrapped for adapters),
    the compiled one's warm-up done; a bank of 2 adapters of rank 8 at most."""
    tok = loaded.tokenizer
    eager, compiled = (
        Scheduler(
            tiny_model(tiny_model_dir),
            tok,
            eos_token_ids=[tok.eos_token_id],
            context_length=256,
            compile_decode=compile_decode,
            max_loras=2,
            max_lora_rank=8,
        )
        for compile_decode in (False, True)
    )
    try:
        assert compiled.compiled is not None and compiled.compiled.wait(600)
        yield eager, compiled
    finally:
        eager.close(grace_s=0)
        compiled.close(grace_s=0)


def finished(
    engine: Scheduler,
    prompts: list[list[int]],
    decode: list[str | None] | None = None,
    adapters: list[str | None] | None = None,
    params: Any = GREEDY,
) -> list[Finished]:
    """Answers to ``prompts`` (greedy), all submitted at once (one batch); ``decode``: each one's path held to;
    ``adapters``: each one's adapter."""
    done = threading.Semaphore(0)
    events: dict[int, Finished] = {}

    def sink(i: int) -> Any:
        def on(event: Any) -> None:
            if isinstance(event, Finished):
                events[i] = event
                done.release()

        return on

    for i, ids in enumerate(prompts):
        path, adapter = decode[i] if decode else None, adapters[i] if adapters else None
        engine.submit(ids, params, sink(i), decode=path, adapter=adapter)
    for _ in prompts:
        assert done.acquire(timeout=120)
    return [events[i] for i in range(len(prompts))]


def answers(engine: Scheduler, prompts: list[list[int]], adapters: list[str | None] | None = None) -> list[str]:
    return [event.text for event in finished(engine, prompts, adapters=adapters)]


def encoded(loaded: Any) -> list[list[int]]:
    return [loaded.tokenizer(p)["input_ids"] for p in PROMPTS]


def test_the_compiled_step_answers_as_the_eager_one_alone_and_batched(engines: Any, loaded: Any) -> None:
    eager, compiled = engines
    ids = encoded(loaded)
    assert eager.compiled is None
    step = compiled.compiled
    assert step.state == "ready"
    assert set(step.timings) == set(SHAPES)  # each shape measured both ways
    assert set(step.compiled) <= set(SHAPES)  # served compiled only where that was faster
    # one graph a shape: no break (a symbolic flag to SDPA broke it at every layer, each layer then compiled
    # on its own, past torch's recompile limit)
    assert not torch._dynamo.utils.counters["graph_break"]
    step.keep_slower = True
    step.warm()  # now every shape is served compiled
    assert step.compiled == tuple(SHAPES)
    alone = [answers(compiled, [one])[0] for one in ids[:2]]  # one row
    together = answers(compiled, ids)  # a batch
    assert alone == [answers(eager, [one])[0] for one in ids[:2]] and together == answers(eager, ids)


def test_each_answer_names_its_decode_path_and_can_be_held_to_one(engines: Any, loaded: Any) -> None:
    eager, compiled = engines
    ids = encoded(loaded)
    assert {e.extra["decode"] for e in finished(compiled, ids)} == {"compiled"}
    assert {e.extra["decode"] for e in finished(eager, ids)} == {"eager"}
    held = finished(compiled, ids, ["eager", "compiled", "eager", None])
    assert [e.extra["decode"] for e in held][:3] == ["eager", "compiled", "eager"]  # never one step for both
    assert [e.text for e in held] == answers(eager, ids)
    with pytest.raises(InvalidRequest) as refused:  # no compiled step in this engine
        eager.submit(ids[0], GREEDY, lambda event: None, decode="compiled")
    assert refused.value.field == "decode"


def test_answers_that_outgrow_the_slots_need_no_new_graph(engines: Any, loaded: Any) -> None:
    _, compiled = engines
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # 4 rows, then fewer as they end: the slots' buffers grow as the answers do
    done = finished(compiled, encoded(loaded), params=filled(temperature=0, max_new_tokens=150))
    # past the first buffers' columns (the prompt and 64 spare): a step's view as wide as a whole buffer was a
    # case of its own for the compiler, a new graph in the middle of serving (40 s on 2 cores for the bundled model)
    assert max(event.completion_tokens for event in done) > 100
    assert {event.extra["decode"] for event in done} == {"compiled"}
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def save_adapter(
    base: Path, folder: Path, seed: int, r: int = 4, targets: tuple[str, ...] = ("q_proj", "v_proj")
) -> Path:
    """A LoRA adapter for the tiny model with random weights (B too: it changes the answers), saved by peft."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
    get_peft_model(tiny_model(base), config).save_pretrained(folder)
    return folder


def test_adapters_run_inside_the_compiled_step_row_by_row(
    engines: Any, loaded: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    eager, compiled = engines
    ids = encoded(loaded)
    folders = {name: save_adapter(tiny_model_dir, tmp_path / name, seed) for name, seed in (("ash", 1), ("birch", 2))}
    # the bank's arithmetic is peft's: the same logits as peft's mixed batch, for base and adapter rows together
    stack = LoraStack(tiny_model(tiny_model_dir))
    for name, folder in folders.items():
        stack.load(name, folder)
        compiled.load_adapter(name, folder)
    rows = [None, "ash", "birch"]
    batch = torch.tensor([ids[0][:3]] * 3)
    with torch.inference_mode():
        want = stack(rows, input_ids=batch).logits
        got = compiled._model.lora(rows, input_ids=batch).logits
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(want[0], want[1], atol=1e-3)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    mixed = ["ash", None, "birch", "ash"]
    served = finished(compiled, ids, adapters=mixed)
    assert {e.extra["decode"] for e in served} == {"compiled"}  # adapters no longer leave the fast path
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # loading them compiled nothing
    held = finished(compiled, ids, decode=["eager"] * 4, adapters=mixed)
    alone = [answers(compiled, [one], adapters=[name])[0] for one, name in zip(ids, mixed, strict=True)]
    assert [e.text for e in served] == [e.text for e in held] == alone
    assert served[1].text == answers(eager, [ids[1]])[0] and served[0].text != answers(eager, [ids[0]])[0]


def test_what_the_bank_cannot_hold_is_refused_and_it_serves_on(
    engines: Any, loaded: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    _, compiled = engines
    for name in compiled.adapters:
        compiled.unload_adapter(name, grace_s=0)
    with pytest.raises(InvalidRequest, match="MAX_LORA_RANK") as wide:
        compiled.load_adapter("wide", save_adapter(tiny_model_dir, tmp_path / "wide", 3, r=16))
    assert wide.value.field == "path"
    with pytest.raises(InvalidRequest, match="decoder blocks") as head:
        compiled.load_adapter("head", save_adapter(tiny_model_dir, tmp_path / "head", 4, targets=("lm_head",)))
    assert head.value.field == "path"
    for i, name in enumerate(("one", "two")):
        compiled.load_adapter(name, save_adapter(tiny_model_dir, tmp_path / name, 5 + i))
    with pytest.raises(InvalidRequest, match="MAX_LORAS") as full:
        compiled.load_adapter("three", save_adapter(tiny_model_dir, tmp_path / "three", 7))
    assert full.value.field == "name"
    ids = encoded(loaded)
    compiled.unload_adapter("one", grace_s=0)  # its slot is zeroed and free again
    assert answers(compiled, ids[:1]) == answers(engines[0], ids[:1])
    compiled.load_adapter("three", tmp_path / "three")
    assert sorted(compiled.adapters) == ["three", "two"]


def test_a_failing_compiled_step_falls_back_to_eager(engines: Any, loaded: Any) -> None:
    eager, compiled = engines
    ids = encoded(loaded)
    step = compiled.compiled

    def fails(*args: Any) -> Any:  # the compiled code failing at a step, as a guard or a new shape can
        raise RuntimeError("the compiled step failed")

    step._compiled = fails
    after = finished(compiled, ids)  # that step, and every later one, eager: the answers are not lost
    assert [e.text for e in after] == answers(eager, ids) and {e.extra["decode"] for e in after} == {"eager"}
    assert step.state == "failed" and step.compiled == () and not compiled.can_compile


def test_a_model_the_compiler_cannot_take_stays_eager(tiny: Any) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("no graph for this")

    step = CompiledStep(tiny, broken, background=False)
    step.warm()
    assert step.state == "failed" and step.compiled == ()
