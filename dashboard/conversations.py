"""The chat's sidebar of kept conversations: New chat, search, the list (title, model, when; newest first),
and for the open one: rename, delete, and export as Markdown or as a notebook (download links).

The list comes from the service (``conversations``; over GraphQL with ``RemoteService``), so a reload of
the page, another browser or another dashboard replica shows the same conversations.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import ipywidgets as widgets

from dashboard import bubbles
from toolkit.conversation.handle import Conversation
from toolkit.conversation.records import ConversationInfo
from toolkit.errors import ToolkitError
from toolkit.grounding import Grounding
from toolkit.protocol import Service

SHOWN = 50  # conversations in the list (the newest, or the search's best)


def when(stamp: str, now: datetime | None = None) -> str:
    """``12:04`` today, ``3 Nov`` this year, else ``3 Nov 2025``."""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    now = now or datetime.now(UTC)
    if moment.date() == now.date():
        return moment.strftime("%H:%M")
    return moment.strftime("%-d %b" if moment.year == now.year else "%-d %b %Y")


def download_link(label: str, filename: str, content: str, mime: str) -> str:
    """A link that downloads ``content`` as ``filename`` (a data URL: no server round trip, no script)."""
    data = base64.b64encode(content.encode()).decode()
    name = bubbles.escape(filename)
    return f'<a class="tk-download" download="{name}" href="data:{mime};base64,{data}">{bubbles.escape(label)}</a>'


def slug(title: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in title.lower()).split()
    return "-".join(words)[:60] or "conversation"


class ConversationsView:
    """The sidebar; ``on_open(info)`` shows a conversation in the chat, ``on_new()`` starts an empty one."""

    def __init__(
        self, backend: Service, on_open: Callable[[ConversationInfo], None], on_new: Callable[[], None]
    ) -> None:
        self.backend = backend
        self.on_open, self.on_new = on_open, on_new
        self.current: str | None = None
        self.shown: ConversationInfo | None = None  # the open one, with its turns (what the exports hold)
        self.items: list[ConversationInfo] = []
        self.new_button = widgets.Button(description="+ New chat", layout=widgets.Layout(width="100%"))
        self.new_button.add_class("tk-new-chat")
        self.search = widgets.Text(placeholder="Search conversations", continuous_update=False)
        self.search.add_class("tk-search")
        self.search.layout.width = "100%"
        self.list = widgets.VBox(layout=widgets.Layout(overflow="auto", max_height="480px"))
        self.list.add_class("tk-conversations")
        self.title = widgets.Text(placeholder="Title", layout=widgets.Layout(width="100%"))
        self.title.add_class("tk-title")
        self.rename_button = widgets.Button(description="Rename", layout=widgets.Layout(width="48%"))
        self.rename_button.add_class("tk-rename")
        self.delete_button = widgets.Button(
            description="Delete", button_style="danger", layout=widgets.Layout(width="48%")
        )
        self.delete_button.add_class("tk-delete")
        self.exports = widgets.HTML()
        self.exports.add_class("tk-exports")
        self.status = widgets.HTML()
        self.actions = widgets.VBox(
            [self.title, widgets.HBox([self.rename_button, self.delete_button]), self.exports],
            layout=widgets.Layout(display="none"),
        )
        self.view = widgets.VBox(
            [self.new_button, self.search, self.list, self.actions, self.status],
            layout=widgets.Layout(width="260px", min_width="220px", padding="0 8px 0 0"),
        )
        self.view.add_class("tk-sidebar")
        self.new_button.on_click(lambda _: self.new())
        self.search.observe(lambda _: self.refresh(), names="value")
        self.rename_button.on_click(lambda _: self.rename())
        self.delete_button.on_click(lambda _: self.delete())

    # ----- the list --------------------------------------------------------------------

    def refresh(self) -> list[ConversationInfo]:
        """Ask the service for the list (newest first, or those the search words find)."""
        query = self.search.value.strip() or None
        try:
            self.items = self.backend.conversations(query=query, first=SHOWN)
        except ToolkitError as exc:
            self.status.value = bubbles.escape(f"Could not list the conversations: {exc.message}")
            return self.items
        except Exception as exc:  # never a traceback on the page
            self.status.value = bubbles.escape(f"Could not list the conversations ({type(exc).__name__}).")
            return self.items
        self.status.value = "" if self.items or not query else "No conversation has those words."
        self.list.children = tuple(self._item(info) for info in self.items)
        return self.items

    def _item(self, info: ConversationInfo) -> widgets.Button:
        meta = " · ".join(filter(None, (info.model, when(info.updated_at))))
        button = widgets.Button(
            description=info.title, tooltip=f"{info.title}\n{meta}", layout=widgets.Layout(width="100%", height="auto")
        )
        button.add_class("tk-conversation")
        if info.id == self.current:
            button.add_class("tk-current")
            button.button_style = "info"
        button.on_click(lambda _, cid=info.id: self.open(cid))
        return button

    # ----- actions ---------------------------------------------------------------------

    def open(self, conversation_id: str) -> ConversationInfo | None:
        """Show a conversation in the chat, with its rename, delete and export controls."""
        try:
            info = self.backend.conversation_info(conversation_id)
        except ToolkitError as exc:
            self.status.value = bubbles.escape(f"Could not open it: {exc.message}")
            return None
        if info is None:  # deleted meanwhile (another tab)
            self.status.value = "That conversation is gone."
            self.refresh()
            return None
        self.select(info)
        self.on_open(info)
        return info

    def select(self, info: ConversationInfo | None) -> None:
        """Mark ``info`` as the open conversation (None: a new, not yet kept one)."""
        self.current = info.id if info is not None else None
        if info is None:
            self.actions.layout.display = "none"
            self.exports.value = ""
        else:
            self.title.value = info.title
            self.actions.layout.display = None
            self._exports(info)
        self._draw()

    def _draw(self) -> None:
        """The list as it is (the current one marked), without asking the service again."""
        self.list.children = tuple(self._item(c) for c in self.items)

    def touched(self, info: ConversationInfo) -> None:
        """The open conversation gained a turn: it is the current one and the newest, without asking the
        service for the list again (one request less per answer: the dashboard's requests share a rate limit)."""
        self.current = info.id
        self.title.value = info.title
        self.actions.layout.display = None
        self._exports(info)
        if not self.search.value.strip():
            self.items = [info, *(c for c in self.items if c.id != info.id)][:SHOWN]
        self._draw()

    def _exports(self, info: ConversationInfo) -> None:
        self.shown = info  # the open conversation whole: a rename exports it again under its new title
        conv = Conversation(
            self.backend,
            model=info.model,
            adapter=info.adapter,
            system_prompt=info.system_prompt,
            web_search=info.web_search,
            info=info,
        )
        name = slug(info.title)
        notebook = json.dumps(conv.to_notebook(), indent=1, ensure_ascii=False)
        self.exports.value = (
            "Export: "
            + download_link("Markdown", f"{name}.md", conv.to_markdown(), "text/markdown")
            + " · "
            + download_link("Notebook", f"{name}.ipynb", notebook, "application/x-ipynb+json")
        )

    def new(self) -> None:
        self.select(None)
        self.on_new()

    def rename(self) -> None:
        if self.current is None:
            return
        try:
            info = self.backend.rename_conversation(self.current, self.title.value)
        except ToolkitError as exc:
            self.status.value = bubbles.escape(exc.message)
            return
        self.status.value = ""
        self.title.value = info.title
        if self.shown is not None and self.shown.id == info.id:  # the exports under the title it has now
            self._exports(replace(self.shown, title=info.title))
        self.refresh()

    def delete(self) -> None:
        """Delete the open conversation (turns and run records); the chat starts a new one."""
        if self.current is None:
            return
        try:
            self.backend.delete_conversation(self.current)
        except ToolkitError as exc:
            self.status.value = bubbles.escape(exc.message)
            return
        self.new()
        self.refresh()

    def latest(self) -> ConversationInfo | None:
        """The newest conversation, opened (what a reload of the page shows); None when there is none."""
        items = self.refresh() if not self.search.value.strip() else []
        return self.open(items[0].id) if items else None


def stored_bubbles(info: ConversationInfo) -> list[tuple[str, str, Any]]:
    """Each turn as (user bubble, assistant bubble, its run record or None), as the chat shows them."""
    out = []
    for turn in info.turns:
        notice = None
        if turn.status == "cancelled":
            notice = "Stopped before the answer was done."
        elif turn.status == "error":
            notice = "This answer failed."
        elif turn.finish_reason == "repetition":
            notice = bubbles.REPEATING
        record = turn.run_record
        web = bool(record and record.get("search"))
        stats = grounding = None
        if record is not None:  # as it was shown live: its stats line and grounding marks
            stats = bubbles.stats_of(
                record.get("model") or turn.model or "",
                record.get("adapter"),
                record.get("usage"),
                record.get("timings"),
                record.get("finish_reason") or turn.finish_reason,
            )
            grounding = Grounding.from_dict(record["grounding"]) if record.get("grounding") else None
        out.append(
            (
                bubbles.user_bubble(turn.prompt, web_search=web),
                bubbles.assistant_bubble(
                    turn.answer, sources=turn.sources, notice=notice, stats=stats, grounding=grounding
                ),
                record if turn.whole else None,
            )
        )
    return out
