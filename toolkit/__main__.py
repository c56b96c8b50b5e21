"""``python -m toolkit [QUESTION]``: load the configured model and stream one answer in the terminal.

(``make run`` starts the GraphQL server and the dashboard; this is the one-question way in.)
"""

from __future__ import annotations

import argparse
import sys

from toolkit.errors import ToolkitError
from toolkit.results import Done, Token
from toolkit.service import InferenceService
from toolkit.settings import Settings

DEFAULT_QUESTION = "What is the capital of France?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit", description=__doc__)
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("--temperature", type=float, default=None, help="default: the model's")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's")
    parser.add_argument("--system", default=None, help="system prompt")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        with InferenceService(settings) as service:
            health = service.health()
            print(f"model: {health.model} on {health.device} ({health.dtype})", file=sys.stderr)
            print(f"> {args.question}", file=sys.stderr)
            for event in service.stream(
                args.question,
                system_prompt=args.system,
                temperature=args.temperature,
                max_new_tokens=args.max_new_tokens,
            ):
                if isinstance(event, Token):
                    print(event.delta, end="", flush=True)
                elif isinstance(event, Done):
                    r = event.result
                    speed = f", {r.tokens_per_s:.1f} tokens/s" if r.tokens_per_s else ""
                    print(
                        f"\n[{r.finish_reason}; {r.usage.completion_tokens} tokens; "
                        f"first token {r.timings.first_token_s or 0:.2f} s{speed}]",
                        file=sys.stderr,
                    )
    except ToolkitError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
