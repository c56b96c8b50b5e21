"""``python -m toolkit [QUESTION]``: load the configured model and stream one answer in the terminal.

(``make run`` starts the GraphQL server and the dashboard; this is the one-question way in.)
"""

from __future__ import annotations

import argparse
import sys

from toolkit.errors import ToolkitError
from toolkit.params import PARAMS, param_options
from toolkit.results import Done, Token
from toolkit.service import InferenceService
from toolkit.settings import Settings

DEFAULT_QUESTION = "What is the capital of France?"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m toolkit", description=__doc__)
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("--system", default=None, help="system prompt")
    for flag, options in param_options():  # --temperature, --top-p, ...: each default is the model's
        parser.add_argument(flag, **options)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        with InferenceService(settings) as service:
            health = service.health()
            print(f"model: {health.model} on {health.device} ({health.dtype})", file=sys.stderr)
            print(f"> {args.question}", file=sys.stderr)
            params = {name: getattr(args, name) for name in PARAMS if getattr(args, name) is not None}
            for event in service.stream(args.question, system_prompt=args.system, **params):
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
