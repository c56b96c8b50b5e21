"""Message rendering. Every text from the user, the web or the model is escaped or sanitized.

ipywidgets' ``HTML`` sets ``innerHTML`` as it is, and markdown-it's default
preset passes raw HTML through; so markdown is rendered with the
``js-default`` preset (raw HTML off, links validated) and the result is
cleaned again by ``nh3`` with a small allow-list.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import nh3
from markdown_it import MarkdownIt

_MD = MarkdownIt("js-default")
ALLOWED_TAGS = {
    "p", "br", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li", "a", "h1", "h2", "h3", "h4",
    "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "hr", "del", "span", "div", "small", "sup",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title", "target"}, "span": {"class"}, "div": {"class"}, "small": {"class"}}
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


def assistant_bubble(
    text: str,
    *,
    sources: Sequence[Any] = (),
    notice: str | None = None,
    stats: str | None = None,
    error: str | None = None,
) -> str:
    body = render_markdown(text) if text else ("" if error else "…")
    parts = [body]
    if error:
        parts.append(f'<span class="tk-notice tk-error">{escape(error)}</span>')
    if notice:
        parts.append(f'<span class="tk-notice">{escape(notice)}</span>')
    parts.append(sources_html(sources))
    if stats:
        parts.append(f'<small class="tk-stats">{escape(stats)}</small>')
    return f'<div class="tk-row assistant"><div class="tk-bubble">{"".join(parts)}</div></div>'


def stats_line(result: Any) -> str:
    first = result.timings.first_token_s
    speed = result.tokens_per_s
    bits = [result.model + (f" + adapter {result.adapter}" if result.adapter else "")]
    bits.append(f"{result.usage.completion_tokens} tokens")
    if first is not None:
        bits.append(f"first token {first:.2f} s")
    if speed:
        bits.append(f"{speed:.1f} tokens/s")
    if result.finish_reason not in ("stop",):
        bits.append(result.finish_reason)
    return " · ".join(bits)


def banner(message: str) -> str:
    return f'<div class="tk-banner">{escape(message)}</div>'
