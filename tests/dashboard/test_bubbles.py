"""Rendering: markdown for answers, and nothing from the user, the web or the model runs as HTML."""

from __future__ import annotations

from dashboard.bubbles import assistant_bubble, domain, render_markdown, sources_html, user_bubble
from toolkit.results import Source

XSS = "<img src=x onerror=alert(1)>"


def test_markdown_renders() -> None:
    html = render_markdown("**Paris** is the capital.\n\n- one\n- two\n\n`code`")
    assert "<strong>Paris</strong>" in html and "<li>one</li>" in html and "<code>code</code>" in html


def test_raw_html_from_the_model_is_escaped() -> None:
    html = render_markdown(f"Look: {XSS} <script>alert(1)</script> <a href='javascript:alert(1)'>x</a>")
    assert "<img" not in html and "<script" not in html and "<a " not in html  # shown as text, not markup
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;script&gt;" in html


def test_markdown_links_with_bad_schemes_are_dropped() -> None:
    html = render_markdown("[click](javascript:alert(1)) and [ok](https://example.org)")
    assert 'href="javascript' not in html  # left as plain text
    assert 'href="https://example.org"' in html and 'rel="noopener noreferrer nofollow"' in html


def test_user_text_is_escaped_and_labelled() -> None:
    html = user_bubble(XSS, web_search=True)
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "🌐 web search" in html
    assert "🌐 web search" not in user_bubble("hi", web_search=False)


def test_sources_are_numbered_links_with_their_domain_and_escaped() -> None:
    sources = [
        Source(1, "Paris - Wikipedia", "https://en.wikipedia.org/wiki/Paris", "s"),
        Source(2, XSS, "javascript:alert(1)", "s"),
        Source(3, "notes", "file:///tmp/notes.md#paris", "s"),
    ]
    html = sources_html(sources)
    assert "[1] <a" in html and 'href="https://en.wikipedia.org/wiki/Paris"' in html and "(en.wikipedia.org)" in html
    assert "<img" not in html and "javascript" not in html and "[2] &lt;img" in html and "(link removed)" in html
    assert "(local file)" in html
    assert domain("https://www.python.org/x") == "python.org"


def test_assistant_bubble_parts() -> None:
    html = assistant_bubble(
        "Hi [1]", sources=[Source(1, "t", "https://a.example", "s")], notice="search failed", stats="3 tokens"
    )
    assert "search failed" in html and "3 tokens" in html and "[1]" in html
    assert "…" in assistant_bubble("")  # waiting for the first token
