"""What the benchmarks share: the long-answer topics, the machine description, the JSON report."""

from __future__ import annotations

import json
import os
import platform
import random
from pathlib import Path
from typing import Any


def save_report(report: dict[str, Any], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return out


# Prompts that ask for long answers: "Write a long, detailed essay about {topic}."
TOPICS = [
    "the history of the printing press",
    "how volcanoes form",
    "the life cycle of a star",
    "why the sky is blue",
    "how bread is made",
    "the rules of chess",
    "how airplanes fly",
    "the water cycle",
    "how vaccines work",
    "the invention of the telephone",
    "how bees make honey",
    "the causes of the seasons",
    "how a computer stores data",
    "the history of the Olympic games",
    "how rainbows appear",
    "the migration of birds",
]


# Words of made-up sources (about one token each): long grounded-size prompts with no real content.
SOURCE_WORDS = [
    "harbour",
    "river",
    "bridge",
    "lantern",
    "orchard",
    "granite",
    "meadow",
    "quarry",
    "signal",
    "ferry",
    "market",
    "tower",
    "canal",
    "valley",
    "winter",
    "copper",
    "beacon",
    "archive",
    "mill",
    "terrace",
    "garden",
    "station",
    "chapel",
    "forest",
    "island",
]


def made_up_words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(SOURCE_WORDS) for _ in range(n))


def cpu_model() -> str:
    """The CPU's model name and the flags that decide speed here (numbers name the CPU they ran on)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(wanted) or 'no AVX-512'})"


def machine() -> dict[str, Any]:
    import torch

    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
