"""The compiled decode step (issue 26, part A), measured: ``torch.compile`` over a slot KV cache, against eager.

    python bench/compiled.py [--steps 20] [--attention sdpa,toolkit_sdpa] [--out bench/results/compiled.json]

What the engine would run: one decode step of ``B`` rows (1 and 16) over a preallocated KV cache of 16
slots x 2,048 positions (float32, the bundled model), each row at its own position (written in place with
``index_copy_``; attention over the live width only, the width a dynamic dimension so that one graph
serves every length), the mask built from the positions. The same function eager and compiled
(``torch.compile``, inductor, default mode; the CPU has no CUDA graphs), at 300 and 1,000 tokens of
context. Reported: the first compiled call per batch size (the compile: minutes cold, seconds when
torch's on-disk caches already hold the graph), the median step, and whether the compiled logits pick the
same tokens. Each attention (``--attention``) in the same run: transformers' ``sdpa`` (which expands the
grouped KV heads under the compiler) and the engine's registered ``toolkit_sdpa`` (SDPA's own grouped-query
support over the cache view, ``toolkit/engines/local/attention.py``); the compiled graph is made again for
each. Prints a table and the CPU, and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine, save_report  # noqa: E402  (bench/, the script's own folder)

SLOTS, POSITIONS = 16, 2048


class SlotCache:
    """transformers' cache interface over per-row positions: row ``i`` writes its next column at ``pos[i]``."""

    def __init__(self, keys: list[Any], values: list[Any], pos: Any, width: int) -> None:
        import torch

        self.keys, self.values, self.pos, self.width = keys, values, pos, width
        self.rows = torch.arange(pos.shape[0])

    def update(self, k: Any, v: Any, layer_idx: int, **kwargs: Any) -> tuple[Any, Any]:
        import torch

        keys, values = self.keys[layer_idx], self.values[layer_idx]
        _, heads, length, dim = keys.shape
        index = ((self.rows[:, None] * heads + torch.arange(heads)[None, :]) * length + self.pos[:, None]).reshape(-1)
        keys.view(-1, dim).index_copy_(0, index, k.reshape(-1, dim))
        values.view(-1, dim).index_copy_(0, index, v.reshape(-1, dim))
        rows = k.shape[0]
        return keys[:rows, :, : self.width], values[:rows, :, : self.width]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--attention", default="sdpa,toolkit_sdpa", help="comma-separated: sdpa, toolkit_sdpa")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "compiled.json"))
    args = parser.parse_args()

    import torch

    from toolkit.engines.local import attention
    from toolkit.models import load_model
    from toolkit.settings import Settings

    loaded = load_model(Settings.from_env(dtype="float32"), progress=False)
    model, config = loaded.model.eval(), loaded.model.config
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    dtype = next(model.parameters()).dtype
    keys = [torch.zeros(SLOTS, heads, POSITIONS, dim, dtype=dtype) for _ in range(config.num_hidden_layers)]
    values = [torch.zeros(SLOTS, heads, POSITIONS, dim, dtype=dtype) for _ in range(config.num_hidden_layers)]
    for t in keys + values:
        torch._dynamo.mark_static_address(t)

    def step(ids: Any, positions: Any, columns: Any) -> Any:
        floor = torch.finfo(dtype).min
        mask = torch.where(columns[None, :] <= positions, 0.0, floor).to(dtype)[:, None, None, :]
        cache = SlotCache(keys, values, positions[:, 0], columns.shape[0])
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, logits_to_keep=1)
        return out.logits[:, -1, :]

    def inputs(rows: int, context: int) -> tuple[Any, Any, Any]:
        ids = torch.randint(1000, 4000, (rows, 1), generator=torch.Generator().manual_seed(rows))
        columns = torch.arange(context + 1)
        torch._dynamo.mark_dynamic(columns, 0)
        return ids, torch.full((rows, 1), context), columns

    def timed(fn: Any, rows: int, context: int) -> float:
        ids, positions, columns = inputs(rows, context)
        fn(ids, positions, columns)
        times = []
        for i in range(args.steps):
            started = time.perf_counter()
            fn(ids, positions + i, torch.arange(context + 1 + i))
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    rows_out = []
    for implementation in args.attention.split(","):
        if implementation == attention.NAME:
            attention.register()
        model.set_attn_implementation(implementation)
        torch._dynamo.reset()  # a graph of its own for each attention
        compiled = torch.compile(step)
        with torch.inference_mode():  # inputs made outside it would not match the compiled graph's guards
            for rows in (1, 16):
                ids, positions, columns = inputs(rows, 300)
                started = time.perf_counter()
                got = compiled(ids, positions, columns)
                compile_s = time.perf_counter() - started
                want = step(ids, positions, columns)
                same = bool(torch.equal(got.argmax(-1), want.argmax(-1)))
                for context in (300, 1000):
                    eager_ms, compiled_ms = timed(step, rows, context), timed(compiled, rows, context)
                    rows_out.append(
                        {
                            "attention": implementation,
                            "rows": rows,
                            "context": context,
                            "first_call_s": round(compile_s, 1),
                            "eager_ms": round(eager_ms, 1),
                            "compiled_ms": round(compiled_ms, 1),
                            "speedup": round(eager_ms / compiled_ms, 2),
                            "same_tokens": same,
                        }
                    )
    print(f"\n{machine()['cpu']}, float32, {args.steps} steps each (medians)")
    print("| attention | rows | context | first compiled call | eager step | compiled step | speedup | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        print(
            f"| {r['attention']} | {r['rows']} | {r['context']} | {r['first_call_s']} s | {r['eager_ms']} ms | "
            f"{r['compiled_ms']} ms | {r['speedup']:.2f}x | {r['same_tokens']} |"
        )
    save_report({"machine": machine(), "slots": SLOTS, "positions": POSITIONS, "cases": rows_out}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
