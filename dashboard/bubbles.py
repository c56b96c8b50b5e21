"""Message rendering. Every text from the user, the web or the model is escaped or sanitized.

ipywidgets' ``HTML`` sets ``innerHTML`` as it is, and markdown-it's default
preset passes raw HTML through; so markdown is rendered with the
``js-default`` preset (raw HTML off, links validated) and the result is
cleaned again by ``nh3`` with a small allow-list.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import urlparse

import nh3
from markdown_it import MarkdownIt

_MD = MarkdownIt("js-default")
ALLOWED_TAGS = {
    "p", "br", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li", "a", "h1", "h2", "h3", "h4",
    "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "hr", "del", "span", "div", "small", "sup", "mark",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title", "target"},
    "span": {"class", "title"},
    "div": {"class"},
    "small": {"class"},
    "mark": {"class"},
}
SAFE_SCHEMES = {"http", "https", "file", "mailto"}

CSS = """
<style>
.tk-chat { display: flex; flex-direction: column; gap: 6px; }
.tk-row { display: flex; }
.tk-row.user { justify-content: flex-end; }
.tk-bubble { max-width: 78%; padding: 8px 12px; border-radius: 14px; line-height: 1.4; overflow-wrap: anywhere; }
.tk-bubble p { margin: 0.2em 0; }
.user .tk-bubble { background: #2563eb; color: white; border-bottom-right-radius: 4px; }
.assistant .tk-bubble { background: #f1f5f9; color: #0f172a; border-bottom-left-radius: 4px; }
.tk-label { font-size: 0.75em; opacity: 0.85; margin-bottom: 2px; }
.tk-sources { margin-top: 6px; font-size: 0.85em; }
.tk-sources a { color: #1d4ed8; }
.tk-sources ol { list-style: none; padding-left: 0; margin: 2px 0; }
.tk-stats { display: block; margin-top: 4px; font-size: 0.72em; color: #64748b; }
.tk-notice { display: block; margin-top: 4px; font-size: 0.8em; color: #b45309; }
.tk-error { color: #b91c1c; }
.tk-banner { padding: 6px 10px; border-radius: 6px; background: #fef3c7; color: #92400e; }
.tk-indicator { font-size: 0.85em; color: #475569; min-height: 1.2em; }
.tk-mark { font-size: 0.75em; margin-left: 2px; cursor: help; }
.tk-mark.tk-ok { color: #15803d; }
.tk-mark.tk-warn { color: #b45309; }
.tk-grounding { display: block; margin-top: 2px; font-size: 0.8em; color: #475569; }
mark.tk-diff { background: #fde68a; padding: 0 1px; border-radius: 2px; }
.tk-columns { display: flex; gap: 8px; align-items: flex-start; }
.tk-sidebar { border-right: 1px solid #e2e8f0; }
.tk-conversation { text-align: left; justify-content: flex-start; overflow: hidden; text-overflow: ellipsis; }
.tk-download { color: #1d4ed8; }
.tk-column { flex: 1 1 0; min-width: 0; }
</style>
"""


def clean(markup: str) -> str:
    return str(
        nh3.clean(
            markup,
            tags=ALLOWED_TAGS,
            attributes=ALLOWED_ATTRIBUTES,
            url_schemes=SAFE_SCHEMES,
            link_rel="noopener noreferrer nofollow",
        )
    )


def render_markdown(text: str) -> str:
    """Model output as safe HTML."""
    return clean(_MD.render(text))


def escape(text: str) -> str:
    return html.escape(text, quote=True)


def domain(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return "local file"
    if parsed.scheme == "docs":  # the local-documents search: the document's path in its folder
        return "local document"
    return parsed.netloc.removeprefix("www.") or url


def safe_href(url: str) -> str | None:
    return url if urlparse(url).scheme in SAFE_SCHEMES else None


def user_bubble(text: str, *, web_search: bool) -> str:
    label = '<div class="tk-label">🌐 web search</div>' if web_search else ""
    body = escape(text).replace("\n", "<br>")
    return f'<div class="tk-row user"><div class="tk-bubble">{label}{body}</div></div>'


def sources_html(sources: Sequence[Any]) -> str:
    """Numbered links, title and domain, matching the [n] in the answer."""
    if not sources:
        return ""
    items = []
    for s in sources:
        href = safe_href(s.url)
        title = escape(s.title or s.url)
        where = escape(domain(s.url)) if href or s.url.startswith("docs://") else "link removed"
        link = f'<a href="{escape(href)}" target="_blank" title="{escape(s.url)}">{title}</a>' if href else title
        items.append(f"<li>[{s.index}] {link} <small>({where})</small></li>")
    return clean(f'<div class="tk-sources"><strong>Sources</strong><ol>{"".join(items)}</ol></div>')


_MARK = "\ue000{}\ue001"  # placeholders (private-use characters) for the marks, through the markdown renderer


def grounded_markdown(text: str, grounding: Any, sources: Sequence[Any]) -> str:
    """The answer as safe HTML with a mark after each checked sentence: ✓ supported by [n] (its title on
    hover), ⚠ not found in the sources, or cites the wrong one."""
    titles = {s.index: s.title or s.url for s in sources}
    marks: list[str] = []
    marked, at = "", 0
    for sentence in grounding.sentences:
        found = text.find(sentence.text, at)
        if found < 0:
            continue
        end = found + len(sentence.text)
        marked += text[at:end] + _MARK.format(len(marks))
        at = end
        marks.append(_mark(sentence, titles))
    html_text = render_markdown(marked + text[at:])
    for i, mark in enumerate(marks):
        html_text = html_text.replace(_MARK.format(i), mark)
    return clean(html_text)


def _mark(sentence: Any, titles: dict[int, str]) -> str:
    """A sentence's mark, its reason on hover: the rule it broke, and the passage it was judged on."""
    best = sentence.best_source
    where = f"[{best}] {titles.get(best, '')}".strip() if best else ""
    evidence = getattr(sentence, "evidence", None)
    said = f"\n\nEvidence: {evidence}" if evidence else ""
    if sentence.verdict == "supported":
        return f'<span class="tk-mark tk-ok" title="{escape("supported by " + where + said)}">✓</span>'
    if sentence.verdict == "miscited":
        cited = ", ".join(f"[{n}]" for n in sentence.cited)
        why = f"cites {cited}, but " + (f"it is in {where}" if best and sentence.score else "no source says it")
        return f'<span class="tk-mark tk-warn" title="{escape(why + said)}">⚠</span>'
    why = "not found in the sources" + (f": {sentence.why}" if getattr(sentence, "why", None) else "")
    return f'<span class="tk-mark tk-warn" title="{escape(why + said)}">⚠</span>'


def assistant_bubble(
    text: str,
    *,
    sources: Sequence[Any] = (),
    notice: str | None = None,
    stats: str | None = None,
    error: str | None = None,
    grounding: Any = None,
    body_html: str | None = None,
) -> str:
    """An answer's bubble; ``body_html`` (escaped markup, such as the compare view's diff) replaces the
    rendered text and its grounding marks."""
    if body_html is not None:
        body = body_html
    elif text and grounding is not None and grounding.sentences:
        body = grounded_markdown(text, grounding, sources)
    else:
        body = render_markdown(text) if text else ("" if error else "…")
    parts = [body]
    if error:
        parts.append(f'<span class="tk-notice tk-error">{escape(error)}</span>')
    if notice:
        parts.append(f'<span class="tk-notice">{escape(notice)}</span>')
    parts.append(sources_html(sources))
    if grounding is not None and grounding.sentences:
        parts.append(f'<span class="tk-grounding">{escape(grounding.summary)}</span>')
    if stats:
        parts.append(f'<small class="tk-stats">{escape(stats)}</small>')
    return f'<div class="tk-row assistant"><div class="tk-bubble">{"".join(parts)}</div></div>'


REPEATING = "Stopped early: the model was repeating itself (the repeated part is not shown)."


def stats_line(result: Any) -> str:
    """An answer's model, tokens, first-token time, speed and (unless it stopped) why it ended."""
    return stats_of(result.model, result.adapter, asdict(result.usage), asdict(result.timings), result.finish_reason)


def stats_of(
    model: str, adapter: str | None, usage: dict[str, Any] | None, timings: dict[str, Any] | None, finish: str | None
) -> str:
    """The stats line from its parts: a live result's, or a kept turn's run record's (``usage``, ``timings``;
    None in records made before they were kept there)."""
    bits = [model + (f" + adapter {adapter}" if adapter else "")]
    tokens = (usage or {}).get("completion_tokens")
    first, total = (timings or {}).get("first_token_s"), (timings or {}).get("total_s")
    if tokens is not None:
        bits.append(f"{tokens} tokens")
    if first is not None:
        bits.append(f"first token {first:.2f} s")
    if tokens is not None and first is not None and total is not None and tokens > 1 and total > first:
        bits.append(f"{(tokens - 1) / (total - first):.1f} tokens/s")
    if finish not in ("stop", None):
        bits.append("stopped: repeating itself" if finish == "repetition" else finish)
    return " · ".join(bits)


def replay_bubble(replay: Any) -> str:
    """A replayed answer: its text and stats, and whether it is the recorded one; or what could not match."""
    if replay.result is None:
        lines = "; ".join(f"{d.field} was {d.recorded!r}, is {d.now!r}" for d in replay.differences)
        return assistant_bubble("", error=f"Cannot replay: {lines}")
    verdict = "replay: identical ✓" if replay.identical else "replay: the text differs"
    if replay.differences:
        verdict += " (forced past: " + ", ".join(d.field for d in replay.differences) + ")"
    return assistant_bubble(replay.result.text, notice=verdict, stats=stats_line(replay.result))


def banner(message: str) -> str:
    return f'<div class="tk-banner">{escape(message)}</div>'
