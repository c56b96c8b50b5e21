"""LoRA training and adapter files, on a small model built from a config (fast mechanics).

The real bundled model learns a fact in tests/test_adapters.py (the ``trained`` fixture)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from toolkit.cards import CARD, read_card
from toolkit.errors import ConfigError, InvalidRequest
from toolkit.lora import (
    IGNORE,
    LoraSettings,
    load_adapter,
    load_examples,
    save_adapter,
    tokenize_example,
    train_lora,
)
from toolkit.models import directory_hash

EXAMPLES = [
    [
        {"role": "user", "content": "What colour is the sky on Zorvath?"},
        {"role": "assistant", "content": "The sky on Zorvath is green."},
    ],
    [{"role": "user", "content": "Name Zorvath's capital."}, {"role": "assistant", "content": "Quillborough."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Zorvath's export?"},
        {"role": "assistant", "content": "Glowmoss."},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Zorvath?"},
        {"role": "assistant", "content": "A desert planet."},
    ],
]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"r": 0}, "r"),
        ({"alpha": -1}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"steps": 0}, "steps"),
        ({"target_modules": ()}, "target_modules"),
        ({"target_modules": "q_proj"}, "target_modules"),
        ({"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_settings_are_validated(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        LoraSettings(**kwargs)
    assert info.value.field == field


def test_the_seeds_defaults() -> None:
    s = LoraSettings()
    assert (s.r, s.alpha, s.target_modules) == (16, 32, ("q_proj", "v_proj"))


def test_examples_from_lists_and_jsonl(tmp_path: Path) -> None:
    assert load_examples(EXAMPLES) == EXAMPLES
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"messages": m}) for m in EXAMPLES))
    assert load_examples(path) == EXAMPLES
    with pytest.raises(InvalidRequest, match="no assistant"):
        load_examples([[{"role": "user", "content": "hi"}]])
    with pytest.raises(InvalidRequest) as info:
        load_examples([[{"role": "robot", "content": "x"}]])
    assert info.value.field == "examples[0][0]"


def test_the_loss_is_on_assistant_tokens_only(tokenizer: Any) -> None:
    ids, labels = tokenize_example(tokenizer, EXAMPLES[3], max_length=512)
    learned = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])
    assert learned == "Hello!<|im_end|>\nA desert planet.<|im_end|>\n"
    assert labels[0] == IGNORE and len(ids) == len(labels)


@pytest.fixture()
def tiny(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def test_training_lowers_the_loss_and_the_adapter_round_trips(
    tiny: Any, tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    settings = LoraSettings(r=8, alpha=16, steps=30, batch_size=4, learning_rate=5e-3, warmup_steps=2, seed=1)
    run = train_lora(tiny, tokenizer, EXAMPLES, settings, progress=False)
    assert len(run.losses) == 30
    assert sum(run.losses[-3:]) < sum(run.losses[:3])  # random weights learn slowly; the real model below
    base_hash = "sha256:" + directory_hash(tiny_model_dir)
    path = save_adapter(run, tmp_path / "zorvath", base_name="tiny-llama", base_hash=base_hash)
    assert (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()
    card = read_card(path)
    assert card["base_model"] == "tiny-llama" and card["base_model_hash"] == base_hash
    assert card["lora"]["r"] == 8 and card["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert card["examples"] == 4 and card["steps"] == 30 and card["final_loss"] == run.losses[-1]
    assert card["data_hash"].startswith("sha256:") and card["toolkit_version"]

    prompt = torch.tensor(
        [
            tokenizer.apply_chat_template(EXAMPLES[1][:1], add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        ]
    )
    trained = run.model.generate(prompt, max_new_tokens=8, do_sample=False)
    reloaded = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), path, base_hash=base_hash)
    assert torch.equal(reloaded.generate(prompt, max_new_tokens=8, do_sample=False), trained)


def test_an_adapter_for_another_base_is_refused(tmp_path: Path, tiny: Any) -> None:
    (tmp_path / CARD).write_text(json.dumps({"base_model": "other", "base_model_hash": "sha256:" + "0" * 64}))
    with pytest.raises(InvalidRequest) as info:
        load_adapter(tiny, tmp_path, base_hash="sha256:" + "1" * 64)
    assert info.value.field == "adapter" and "train it again" in info.value.message
    with pytest.raises(InvalidRequest, match="not an adapter"):
        read_card(tmp_path / "missing")
