"""``%load_ext toolkit``: the ``%%ask`` / ``%ask`` magics, like jupyter-ai's ``%%ai`` on our own functions.

    %%ask --web --temperature 0.2 --out answer
    What changed in the latest Python release?

The answer streams into the cell as markdown, the sources follow as links, and
the full result (with its run record) is kept in a variable (``--out``, default
``_ask``). Each ask continues the notebook's current conversation (kept in the
store, ``toolkit.conversation``; the variable ``_conversation`` holds it);
``%ask_new`` starts another. The service is, in order: ``--service NAME`` (a variable holding an
``InferenceService`` or ``RemoteService``), the one set with ``%ask_service NAME``,
a ``RemoteService`` on ``GRAPHQL_URL`` when that is set, else an in-process
service started on first use.
"""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import Markdown, display

from toolkit.errors import ToolkitError
from toolkit.params import PARAMS, GenerationParams, param_options
from toolkit.results import Done, SearchFinished, SearchStarted, Token


def _md_escape(text: str) -> str:
    return text.replace("[", "\\[").replace("]", "\\]")


def sources_markdown(result: Any) -> str:
    if not result.sources:
        return ""
    lines = [f"{s.index}. [{_md_escape(s.title or s.url)}](<{s.url}>)" for s in result.sources]
    return "\n\n**Sources**\n\n" + "\n".join(lines)


def generation_arguments(func: Any) -> Any:
    """``--temperature``, ``--top-p``, ... : one option per generation parameter, from its declaration."""
    for flag, options in reversed(param_options()):
        func = argument(flag, **options)(func)
    return func


@magics_class
class AskMagics(Magics):
    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self._service: Any = None
        self._conversation: Any = None  # the notebook's current Conversation
        self.last_error: str | None = None  # what the last failed ask showed in its cell

    @property
    def _ns(self) -> dict[str, Any]:
        assert self.shell is not None
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    def _backend(self, name: str | None) -> Any:
        if name:
            if name not in self._ns:
                raise ToolkitError(f"--service {name}: no such variable in this notebook")
            return self._ns[name]
        if self._service is None:
            from toolkit.client import ClientSettings, RemoteService

            if ClientSettings.from_env().graphql_url:
                self._service = RemoteService.from_env()
            else:
                from toolkit.service import InferenceService

                self._service = InferenceService().start()
        return self._service

    @line_magic
    def ask_service(self, line: str) -> None:
        """``%ask_service NAME``: use the service in variable NAME for later ``%%ask`` cells."""
        name = line.strip()
        if name not in self._ns:
            print(f"ask_service: no variable named {name!r}")
            return
        self._service = self._ns[name]

    @line_magic
    def ask_new(self, line: str) -> None:
        """``%ask_new``: the next ``%%ask`` starts a new conversation (``%ask_new QUESTION`` asks it now)."""
        self._conversation = None
        if line.strip():
            self.ask(line)

    def _conversation_on(self, backend: Any) -> Any:
        if self._conversation is None or self._conversation.service is not backend:
            self._conversation = backend.conversation()
            self._ns["_conversation"] = self._conversation
        return self._conversation

    @magic_arguments()
    @argument("--web", action="store_true", help="ground the answer in web search results")
    @argument("--model", default=None, help="the model to ask (default: the service's)")
    @argument("--adapter", default=None, help="a LoRA adapter")
    @generation_arguments
    @argument("--system", default=None, help="a system prompt")
    @argument("--service", default=None, help="a variable holding the service to use")
    @argument("--out", default="_ask", help="the variable that gets the full result (default _ask)")
    @argument("prompt", nargs="*", help="the question (%%ask: the cell is the question)")
    @line_cell_magic
    def ask(self, line: str, cell: str | None = None) -> None:
        """Ask the model; the answer streams into the cell. ``%ask --help`` lists the options."""
        try:
            args = parse_argstring(self.ask, line)
        except Exception as exc:  # argparse usage errors: one line, no traceback
            print(f"ask: {exc}")
            return
        prompt = cell.strip() if cell is not None else " ".join(args.prompt)
        if cell is not None and args.prompt:
            prompt = " ".join(args.prompt) + "\n" + prompt
        self._ns[args.out] = None
        self.last_error = None
        handle = display(Markdown("…"), display_id=True)
        try:
            params = {k: getattr(args, k) for k in PARAMS if getattr(args, k) is not None}  # else the model's defaults
            GenerationParams(**params)  # a bad option is refused before anything is asked
            turn = {"system_prompt": args.system, "model": args.model, "adapter": args.adapter}
            conversation = self._conversation_on(self._backend(args.service))
            for event in conversation.stream(prompt, web_search=args.web, **turn, **params):
                if isinstance(event, SearchStarted):
                    handle.update(Markdown(f"🌐 searching `{event.query}`…"))
                elif isinstance(event, SearchFinished) and event.status != "ok":
                    print(f"web search {event.status.replace('_', ' ')}: {event.message}; answering without sources")
                elif isinstance(event, Token):
                    handle.update(Markdown(event.text))
                elif isinstance(event, Done):
                    result = event.result
                    self._ns[args.out] = result
                    grounding = f"\n\n*{result.grounding.summary}*" if result.grounding else ""
                    handle.update(Markdown(result.text + sources_markdown(result) + grounding))
        except ToolkitError as exc:
            self.last_error = exc.message
            handle.update(Markdown(f"**ask failed:** {exc.message}"))


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(AskMagics)


__all__ = ["AskMagics", "load_ipython_extension"]
