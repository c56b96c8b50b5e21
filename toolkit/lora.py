"""LoRA adapters: train on chat examples, save with an adapter card, check the base on load.

    settings = LoraSettings(steps=60)
    run = train_lora(loaded.model, loaded.tokenizer, load_examples("notebooks/data/facts.jsonl"), settings)
    save_adapter(run, "adapters/pirate", base_name=loaded.name, base_hash=loaded.content_hash)

A plain PyTorch loop rather than TRL's ``SFTTrainer``: a few dozen lines, no extra
dependency, the same code on CPU, CUDA and a 4-bit base, and the loss on assistant
tokens only is explicit (below) instead of a trainer option.

Serving adapters per request (hot load and unload, mixed batches) is ``toolkit.adapters``
behind ``InferenceService.load_adapter``. ``train_lora`` injects LoRA layers into the model
it is given: train on a model of its own (``toolkit.models.load_model``), not on the one a
service is serving.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from toolkit.cards import CARD, check_card
from toolkit.errors import ConfigError, InvalidRequest, MissingDependency, ToolkitError
from toolkit.version import __version__

IGNORE = -100
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class LoraSettings:
    """LoRA and training settings; the seed's defaults (r=16, alpha=32, q_proj/v_proj)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    learning_rate: float = 2e-4
    steps: int = 60
    batch_size: int = 4
    grad_accum: int = 1
    warmup_steps: int = 5
    max_length: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (
            ("r", 1),
            ("alpha", 1),
            ("steps", 1),
            ("batch_size", 1),
            ("grad_accum", 1),
            ("max_length", 8),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(name, f"must be an integer >= {low}, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < 1):
            raise ConfigError("learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError("warmup_steps", f"must be an integer >= 0, got {self.warmup_steps!r}")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ConfigError("target_modules", "must be a non-empty list of module names, e.g. ['q_proj', 'v_proj']")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))


@dataclass
class TrainRun:
    model: Any  # the peft model, adapter attached
    settings: LoraSettings
    losses: list[float]
    seconds: float
    examples: int
    data_hash: str
    extra: dict[str, Any] = field(default_factory=dict)


def load_examples(source: str | Path | Sequence[Any]) -> list[Messages]:
    """Chat examples: a list of message lists (or of ``{"messages": [...]}``), or a JSONL file of those."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            rows: list[Any] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, ValueError) as exc:
            raise InvalidRequest("examples", f"cannot read {path} as JSONL: {exc}") from None
    else:
        rows = list(source)
    examples = []
    for i, row in enumerate(rows):
        messages = row.get("messages") if isinstance(row, Mapping) else row
        if not isinstance(messages, Sequence) or not messages:
            raise InvalidRequest(f"examples[{i}]", "must be a non-empty list of {role, content} messages")
        clean = []
        for j, m in enumerate(messages):
            if (
                not isinstance(m, Mapping)
                or m.get("role") not in ("system", "user", "assistant")
                or not isinstance(m.get("content"), str)
            ):
                raise InvalidRequest(f"examples[{i}][{j}]", "must be {role: system|user|assistant, content: str}")
            clean.append({"role": str(m["role"]), "content": str(m["content"])})
        if not any(m["role"] == "assistant" for m in clean):
            raise InvalidRequest(f"examples[{i}]", "has no assistant message to learn from")
        examples.append(clean)
    if not examples:
        raise InvalidRequest("examples", "no examples")
    return examples


def data_hash(examples: Sequence[Messages]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(list(examples), sort_keys=True).encode()).hexdigest()


def tokenize_example(tokenizer: Any, messages: Messages, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels; labels are -100 except on the assistant's tokens (the loss is on those only)."""

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    full = ids(tokenizer.apply_chat_template(messages, tokenize=False))
    labels = [IGNORE] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(ids(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)))
        end = len(ids(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)))
        labels[start:end] = full[start:end]
    return full[:max_length], labels[:max_length]


def train_lora(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Messages],
    settings: LoraSettings | None = None,
    *,
    progress: bool = True,
) -> TrainRun:
    """Attach a LoRA adapter to ``model`` and train it; returns the peft model and the loss history."""
    import torch

    try:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError:
        raise MissingDependency("peft", "LoRA training") from None
    settings = settings or LoraSettings()
    examples = load_examples(examples)
    torch.manual_seed(settings.seed)
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    device = next(peft_model.parameters()).device
    rows = [tokenize_example(tokenizer, m, settings.max_length) for m in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate)

    def schedule(step: int) -> float:  # linear warmup, then cosine down to 10 %
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        done = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    order = torch.Generator().manual_seed(settings.seed)
    queue: list[int] = []
    losses: list[float] = []
    started = time.perf_counter()
    peft_model.train()
    bar = tqdm(range(settings.steps), desc="LoRA training", disable=not progress, unit="step")
    for _ in bar:
        total = 0.0
        for _ in range(settings.grad_accum):
            if len(queue) < settings.batch_size:
                queue += torch.randperm(len(rows), generator=order).tolist()
            batch = [rows[queue.pop(0)] for _ in range(settings.batch_size)]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=device)
            labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in batch], device=device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=device)
            loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss / settings.grad_accum
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
        bar.set_postfix(loss=f"{total:.3f}")
    peft_model.eval()
    return TrainRun(peft_model, settings, losses, time.perf_counter() - started, len(examples), data_hash(examples))


def save_adapter(run: TrainRun, path: str | Path, *, base_name: str, base_hash: str) -> Path:
    """The peft adapter plus ``adapter_card.json``: base model and hash, settings, data, steps, loss, time."""
    target = Path(path)
    run.model.save_pretrained(str(target))
    card = {
        "base_model": base_name,
        "base_model_hash": base_hash,
        "lora": {**asdict(run.settings), "target_modules": list(run.settings.target_modules)},
        "data_hash": run.data_hash,
        "examples": run.examples,
        "steps": len(run.losses),
        "final_loss": run.losses[-1] if run.losses else None,
        "seconds": round(run.seconds, 2),
        "toolkit_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (target / CARD).write_text(json.dumps(card, indent=2))
    return target


def load_adapter(model: Any, path: str | Path, *, base_hash: str, name: str = "default") -> Any:
    """Load a saved adapter onto ``model``; refuses one trained on a different base model."""
    try:
        from peft import PeftModel
    except ImportError:
        raise MissingDependency("peft", "loading a LoRA adapter") from None
    check_card(path, base_hash=base_hash)
    try:
        return PeftModel.from_pretrained(model, str(path), adapter_name=name)
    except (OSError, ValueError) as exc:
        raise ToolkitError(f"loading the adapter at {path} failed: {exc}") from None
