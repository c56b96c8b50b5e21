"""``ChatApp``: the chat and the GraphQL Explorer as ipywidgets, over any service with the
``InferenceService`` interface (``RemoteService`` by default). The chat's Settings (model, adapter,
parameters, system prompt) are ``dashboard.settings_panel.SettingsPanel``.

Widgets are only ever updated by setting their values, also from the streaming
thread (never ``with output:`` from a thread); that needs ipykernel >= 7.1.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from typing import Any

import ipywidgets as widgets

from dashboard import bubbles
from dashboard.compare import CompareView
from dashboard.config import DashboardSettings
from dashboard.conversations import ConversationsView, stored_bubbles
from dashboard.evaluate import EvaluateView
from dashboard.settings_panel import SettingsPanel
from toolkit.conversation.records import ConversationArg, ConversationInfo
from toolkit.errors import ToolkitError
from toolkit.params import InferRequest, Turn
from toolkit.protocol import Service
from toolkit.results import Done, RunRecord, SearchFinished, SearchStarted, Token

WEB_OFF, WEB_ON = "🌐 Off", "🌐 On"
SEARCHING = "🌐 searching…"


def backend_from_env(settings: DashboardSettings | None = None) -> Service:
    """``RemoteService`` on ``GRAPHQL_URL``, or with ``DASHBOARD_BACKEND=inprocess`` a service in this kernel."""
    settings = settings or DashboardSettings.from_env()
    if settings.backend == "inprocess":
        from toolkit.service import InferenceService

        return InferenceService().start(wait=False, progress=False)
    import secrets

    from toolkit.client import RemoteService

    service = RemoteService.from_env()
    service.session = secrets.token_urlsafe(12)  # this page's kernel: its own rate limit with FRONTEND_API_KEYS
    return service


def explorer_url(backend: Any, settings: DashboardSettings | None = None) -> str | None:
    explicit = (settings or DashboardSettings.from_env()).explorer_url
    if explicit:
        return explicit
    url = getattr(backend, "url", None)
    return url.rsplit("/graphql", 1)[0] + "/graphiql" if isinstance(url, str) else None


class ChatApp:
    """Bubble chat with web search, sources, stop and settings, beside the kept conversations; Compare,
    Evaluate and GraphQL Explorer tabs."""

    def __init__(
        self, backend: Service, *, graphiql_url: str | None = None, poll_s: float = 2.0, resume: bool = True
    ) -> None:
        """``resume``: open the newest kept conversation (what a reload of the page should show); else a new chat."""
        self.backend = backend
        self.conversation_id: str | None = None  # the kept conversation the chat continues (None: a new one)
        self.history: list[Turn] = []  # the turns, when the service keeps no conversations
        self.last_result: Any = None
        self.last_replay: Any = None
        self.busy = False
        self.request_id: str | None = None
        self._conversation = 0  # bumped by New chat and by opening one: an older conversation's stream adds nothing
        self._thread: threading.Thread | None = None
        self._poll_s = poll_s
        self._stop_polling = threading.Event()

        self.banner = widgets.HTML(layout=widgets.Layout(display="none"))
        self.messages = widgets.VBox(layout=widgets.Layout(min_height="240px", overflow="auto"))
        self.messages.add_class("tk-chat")
        self.indicator = widgets.HTML(value="")
        self.indicator.add_class("tk-indicator")
        self.prompt = widgets.Text(placeholder="Ask something… (Enter sends)", layout=widgets.Layout(flex="1 1 auto"))
        self.web = widgets.ToggleButton(
            value=False, description=WEB_OFF, tooltip="web search", layout=widgets.Layout(width="90px")
        )
        self.send_button = widgets.Button(
            description="Send", button_style="primary", layout=widgets.Layout(width="80px")
        )
        self.stop_button = widgets.Button(description="Stop", disabled=True, layout=widgets.Layout(width="70px"))
        self.clear_button = widgets.Button(
            description="Clear", tooltip="a new chat (this one stays in the list)", layout=widgets.Layout(width="70px")
        )
        for w, name in (
            (self.prompt, "tk-prompt"),
            (self.web, "tk-web"),
            (self.send_button, "tk-send"),
            (self.stop_button, "tk-stop"),
            (self.clear_button, "tk-clear"),
        ):
            w.add_class(name)

        self.settings = SettingsPanel(backend)  # model, adapter, parameters, system prompt

        input_bar = widgets.HBox([self.prompt, self.web, self.send_button, self.stop_button, self.clear_button])
        self.sidebar = ConversationsView(backend, self._show, self._new)
        talk = widgets.VBox(
            [self.banner, self.messages, self.indicator, input_bar, self.settings.view],
            layout=widgets.Layout(flex="1 1 auto", min_width="0"),
        )
        chat = widgets.VBox([widgets.HTML(bubbles.CSS), widgets.HBox([self.sidebar.view, talk])])
        self.graphiql_url = graphiql_url if graphiql_url is not None else explorer_url(backend)
        if self.graphiql_url:
            src = bubbles.escape(self.graphiql_url)
            explorer = widgets.HTML(
                f'<iframe src="{src}" title="GraphQL Explorer" style="width: 100%; height: 640px; border: 0;"></iframe>'
            )
        else:
            explorer = widgets.HTML(
                "<p>The GraphQL Explorer needs the GraphQL server: set GRAPHQL_URL and run <code>make serve</code>.</p>"
            )
        self.compare = CompareView(backend)
        compare = widgets.VBox([widgets.HTML(bubbles.CSS), self.compare.view])
        self.evaluate = EvaluateView(backend)
        evaluate = widgets.VBox([widgets.HTML(bubbles.CSS), self.evaluate.view])
        self.tabs = widgets.Tab(
            children=[chat, compare, evaluate, explorer], titles=("Chat", "Compare", "Evaluate", "GraphQL Explorer")
        )
        self.tabs.observe(self._on_tab, names="selected_index")
        self._compare_started = False
        self._evaluate_started = False

        self.web.observe(self._on_web, names="value")
        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.clear())
        with warnings.catch_warnings():  # Enter in a Text: on_submit is the one event that means it
            warnings.simplefilter("ignore", DeprecationWarning)
            self.prompt.on_submit(lambda _: self.send())
        self.refresh_health()
        if resume:
            self.sidebar.latest()  # a reload of the page shows the conversation it showed
        else:
            self.sidebar.refresh()
        if poll_s > 0:
            threading.Thread(target=self._poll, name="dashboard-health", daemon=True).start()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.tabs)

    # ----- health ----------------------------------------------------------------------

    def refresh_health(self) -> bool:
        """Show a banner when the backend is down, loading or broken; True when ready."""
        try:
            health = self.backend.health()
        except ToolkitError as exc:
            self._banner(f"The model server is not reachable ({exc.message}). Retrying…")
            return False
        except Exception as exc:  # never a traceback on the page
            self._banner(f"The model server cannot be asked ({type(exc).__name__}). Retrying…")
            return False
        if health.status == "loading":
            self._banner(f"The model {health.model} is still loading; the chat will work when it is ready.")
            return False
        if health.status != "ready":
            self._banner(f"The model is not available ({health.status}): {health.error or 'see the server log'}")
            return False
        self._banner(None)
        self.settings.poll()
        return True

    def _banner(self, message: str | None) -> None:
        if message is None:
            self.banner.layout.display = "none"
            self.banner.value = ""
        else:
            self.banner.value = bubbles.banner(message)
            self.banner.layout.display = None

    def _on_tab(self, change: dict[str, Any]) -> None:
        """The Compare and Evaluate tabs, opened the first time: their variants start from the Chat tab's
        settings."""
        s = self.settings
        settings = (s.model.options, s.model.value, s.adapter.value, self.web.value, s.tracked["temperature"])
        if change["new"] == 1 and not self._compare_started:
            self._compare_started = True
            self.compare.start_from(*settings)
        if change["new"] == 2 and not self._evaluate_started:
            self._evaluate_started = True
            self.evaluate.start_from(*settings)

    def _poll(self) -> None:
        while not self._stop_polling.wait(self._poll_s):
            self.refresh_health()

    def close(self) -> None:
        self._stop_polling.set()

    # ----- chat --------------------------------------------------------------------------

    def _on_web(self, change: dict[str, Any]) -> None:
        self.web.description = WEB_ON if change["new"] else WEB_OFF

    def request_for(self, text: str) -> InferRequest:
        return InferRequest(
            prompt=text,
            history=tuple(self.history) if self.conversation_id is None else (),
            web_search=self.web.value,
            **self.settings.request_fields(),
        )

    def send(self, text: str | None = None) -> None:
        """Send the prompt (or ``text``); the answer streams in from a background thread."""
        text = self.prompt.value if text is None else text
        if self.busy or not text.strip():
            return
        try:
            request = self.request_for(text)
        except ToolkitError as exc:
            self.indicator.value = bubbles.escape(exc.message)
            return
        self.busy = True
        self.request_id = request.request_id
        self.prompt.value = ""
        self.send_button.disabled = True
        self.stop_button.disabled = False
        user = widgets.HTML(bubbles.user_bubble(text, web_search=request.web_search))
        answer = widgets.HTML(bubbles.assistant_bubble(""))
        answer.add_class("tk-answer")
        self.messages.children = (*self.messages.children, user, answer)
        self.indicator.value = SEARCHING if request.web_search else "…"
        self._thread = threading.Thread(
            target=self._stream, args=(request, answer, text, self._conversation), daemon=True
        )
        self._thread.start()

    def _stream(self, request: InferRequest, answer: widgets.HTML, text: str, conversation: int) -> None:
        sources: tuple[Any, ...] = ()
        notice = None
        try:
            kept: ConversationArg = self.conversation_id if self.conversation_id is not None else True
            for event in self.backend.stream(request, conversation=kept):
                if isinstance(event, SearchStarted):
                    self.indicator.value = SEARCHING
                elif isinstance(event, SearchFinished):
                    self.indicator.value = "…"
                    if event.status != "ok":
                        why = event.status.replace("_", " ")
                        notice = f"Web search failed ({why}): {event.message}. Answered without sources."
                elif isinstance(event, Token):
                    self.indicator.value = ""
                    answer.value = bubbles.assistant_bubble(event.text, notice=notice)
                elif isinstance(event, Done):
                    result = event.result
                    sources = result.sources
                    self.last_result = result
                    if result.finish_reason == "repetition":
                        notice = " ".join(filter(None, (notice, bubbles.REPEATING)))
                    answer.value = bubbles.assistant_bubble(
                        result.text,
                        sources=sources,
                        notice=notice,
                        stats=bubbles.stats_line(result),
                        grounding=result.grounding,
                    )
                    if conversation == self._conversation:
                        self._kept(result, text)
        except ToolkitError as exc:
            answer.value = bubbles.assistant_bubble("", error=f"The request failed: {exc.message}")
            self.prompt.value = text  # keep the input, to retry
            if getattr(exc, "field", None) == "adapter":
                self.settings.fill_adapters()
            if exc.status == 503:  # down, loading, busy: the banner says which
                self.refresh_health()
        except Exception as exc:  # never a traceback on the page
            answer.value = bubbles.assistant_bubble("", error=f"The request failed ({type(exc).__name__}).")
            self.prompt.value = text
        finally:
            self.indicator.value = ""
            self.busy = False
            self.request_id = None
            self.send_button.disabled = False
            self.stop_button.disabled = True

    def _kept(self, result: Any, text: str) -> None:
        """After an answer: the conversation it was kept in is the open one (or, with no store, the history
        grows here), and it has a replay button."""
        if result.conversation_id is not None:
            if self.conversation_id != result.conversation_id:
                self.conversation_id = result.conversation_id
            info = None
            with contextlib.suppress(Exception):  # not shown now: the list says it next time
                info = self.backend.conversation_info(result.conversation_id)
            if info is not None:
                self.sidebar.touched(info)
            else:
                self.sidebar.current = result.conversation_id
                self.sidebar.refresh()
        elif result.text.strip():
            self.history += [Turn("user", text), Turn("assistant", result.text)]
        if result.text.strip():
            self._add(self._replay_button(result))

    def _show(self, info: ConversationInfo) -> None:
        """Open a kept conversation: its turns as bubbles (with replay buttons); the chat continues it."""
        if self.busy:
            self.stop()
        self._conversation += 1
        self.conversation_id = info.id
        self.history = []
        self.last_result = None
        self.settings.show(info)  # the model, adapter and system prompt the conversation ran with
        shown: list[widgets.Widget] = []
        for user, answer, record in stored_bubbles(info):
            bubble = widgets.HTML(answer)
            bubble.add_class("tk-answer")
            shown += [widgets.HTML(user), bubble]
            if record is not None:
                shown.append(self._replay_button(_Recorded(RunRecord.from_dict(record))))
        self.messages.children = tuple(shown)

    def _new(self) -> None:
        """New chat: an empty one, kept with its first answer. The model and adapter stay as chosen; the system
        prompt, which belongs to a conversation, starts empty."""
        if self.busy:
            self.stop()
        self._conversation += 1
        self.conversation_id = None
        self.settings.new_chat()
        self.messages.children = ()
        self.history = []
        self.last_result = None

    def _add(self, widget: widgets.Widget) -> None:
        self.messages.children = (*self.messages.children, widget)

    def _replay_button(self, result: Any) -> widgets.Button:
        """Under an answer: run its run record again and show whether the text is the same."""
        button = widgets.Button(description="↻ replay", tooltip="replay this answer from its run record")
        button.add_class("tk-replay")
        button.on_click(lambda _: threading.Thread(target=self.replay, args=(result, button), daemon=True).start())
        return button

    def replay(self, result: Any, button: widgets.Button | None = None) -> None:
        """Replay ``result`` (the same model, adapter, messages, parameters and seed) into a new bubble."""
        if button is not None:
            button.disabled = True
        bubble = widgets.HTML(bubbles.assistant_bubble(""))
        bubble.add_class("tk-answer")
        self._add(bubble)
        try:
            replay = self.backend.replay(result.run_record)
        except ToolkitError as exc:
            bubble.value = bubbles.assistant_bubble("", error=f"The replay failed: {exc.message}")
            return
        except Exception as exc:  # never a traceback on the page
            bubble.value = bubbles.assistant_bubble("", error=f"The replay failed ({type(exc).__name__}).")
            return
        finally:
            if button is not None:
                button.disabled = False
        self.last_replay = replay
        bubble.value = bubbles.replay_bubble(replay)

    def stop(self) -> None:
        """Cancel the running answer: the service stops generating at the next token."""
        if self.request_id is not None:
            try:
                self.backend.cancel(self.request_id)
            except ToolkitError as exc:
                self.indicator.value = bubbles.escape(f"Could not stop: {exc.message}")

    def clear(self) -> None:
        """A new chat (New chat in the sidebar): the one shown stays in the list."""
        self.sidebar.new()

    def wait(self, timeout: float = 120.0) -> None:
        """Block until the current answer is complete (for tests and scripts)."""
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.01)


class _Recorded:
    """A kept turn, as the replay button takes a result: by its run record."""

    def __init__(self, run_record: RunRecord) -> None:
        self.run_record = run_record
