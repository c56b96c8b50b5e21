"""Control tokens: text that is not the caller's own must never open a turn of the chat.

A chat template marks turns with control tokens (``<|im_start|>``, ``<|start_header_id|>``,
``[INST]`` ...). A tokenizer turns such a string into the real control token wherever it appears in
the rendered prompt, so a web page or a local document that contains ``<|im_end|>\\n<|im_start|>system``
would open a turn of its own inside the search block; no boundary around the block can prevent that.

``ControlTokens`` knows a model's markers (its tokenizer's special and added tokens and its chat
template's literal markers, plus the usual markers of the common chat formats) and treats text in
two ways:

- ``strip(text)``: untrusted text (search results, local documents). Every marker is removed, and so
  is every look-alike of one: the text is folded first (NFKC, which maps fullwidth, mathematical and
  superscript letters to plain ones, then a table of confusable letters such as Cyrillic ``і`` and
  ``е`` and of bar, bracket and underscore look-alikes, then case) and a marker may be spelled with
  spaces between its letters.
- ``defang(text)``: the caller's own text (prompt, history, system prompt). Exact markers only, and
  they are kept readable: a space goes in after the first character (``<|im_start|>`` becomes
  ``< |im_start|>``), so they reach the model as plain text, never as a control token. A request's
  turns are its roles; its text never adds one. The run record keeps the messages as the model saw
  them.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# The turn markers of the common chat formats, for models whose tokenizer is not at hand (a remote server).
COMMON_MARKERS: tuple[str, ...] = (
    # ChatML (SmolLM, Qwen, many others)
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_sep|>",
    # Llama 3
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    # Llama 2, Mistral
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "<s>",
    "</s>",
    # Gemma
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
    # Phi, Zephyr, gpt-oss
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|start|>",
    "<|message|>",
    "<|channel|>",
    "<|return|>",
    # Command R
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    # DeepSeek
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
)

# Letters and signs that look like the ones markers are made of, mapped to those (after NFKC, which
# already folds fullwidth, mathematical alphanumeric, superscript and small-capital forms).
CONFUSABLES: dict[str, str] = {
    # Cyrillic
    "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "м": "m",
    "н": "h", "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "т": "t", "у": "y", "х": "x", "ԝ": "w", "ӏ": "l",
    "ո": "n", "ս": "u", "ց": "g", "հ": "h", "ɑ": "a", "ɡ": "g", "ı": "i", "ɩ": "i", "ʏ": "y", "ᴠ": "v",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j",
    # bars
    "∣": "|", "ǀ": "|", "│": "|", "┃": "|", "❘": "|", "丨": "|", "ㅣ": "|", "︱": "|", "︳": "|", "ᛁ": "|",
    "¦": "|", "‖": "|", "ǁ": "|", "⏐": "|", "￨": "|",
    # angle brackets
    "‹": "<", "›": ">", "〈": "<", "〉": ">", "⟨": "<", "⟩": ">", "˂": "<", "˃": ">", "ᐸ": "<", "ᐳ": ">",
    "❮": "<", "❯": ">", "〈": "<", "〉": ">", "《": "<", "》": ">", "≺": "<", "≻": ">", "⋖": "<", "⋗": ">",
    "«": "<", "»": ">",
    # square brackets
    "⟦": "[", "⟧": "]", "［": "[", "］": "]", "〔": "[", "〕": "]", "【": "[", "】": "]", "⁅": "[", "⁆": "]",
    # underscores and slashes
    "‗": "_", "ˍ": "_", "＿": "_", "▁": "_", "⎽": "_", "ꓸ": "_", "∕": "/", "⁄": "/", "⧸": "/", "╱": "/",
}  # fmt: skip
_SPACE = r"\s*"  # "< | i m _ e n d | >": letters spaced out still spell the marker
# literal markers in a chat template's source
_TEMPLATE_MARKERS = re.compile(r"<\|[^|<>\s'\"{}]{1,48}\|>|\[/?[A-Z_]{2,24}\]|<</?SYS>>|</?[a-z_]{2,24}>")
_MIN_MARKER = 3


@functools.lru_cache(maxsize=4096)
def fold_char(ch: str) -> str:
    """What a character looks like, as plain lower-case ASCII where it can be."""
    folded = unicodedata.normalize("NFKC", CONFUSABLES.get(ch, ch))
    return "".join(CONFUSABLES.get(c, c) for c in folded).casefold()


def fold(text: str) -> tuple[str, list[int]]:
    """The folded text, and for each of its characters the index of the character it came from."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        folded = ch if ch.isascii() and not ch.isupper() else fold_char(ch)
        out.append(folded)
        origin.extend([i] * len(folded))
    return "".join(out), origin


def _trie_pattern(words: Iterable[str], gap: str) -> str:
    """One regex that matches any of ``words`` (longest first), with ``gap`` allowed between letters."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        ends = "" in node
        branches = [
            re.escape(ch) + (gap + emit(child) if child.keys() - {""} else "") for ch, child in node.items() if ch
        ]
        if not branches:
            return ""
        if len(branches) == 1 and not ends:
            return branches[0]
        body = "(?:" + "|".join(sorted(branches, key=len, reverse=True)) + ")"
        return body + "?" if ends else body

    # words that end inside another word's path: the trie keeps both (an optional tail)
    return emit(trie)


@dataclass(frozen=True)
class ControlTokens:
    """A model's turn markers; ``strip`` for untrusted text, ``defang`` for the caller's own."""

    markers: tuple[str, ...]

    @classmethod
    def of(cls, markers: Iterable[str]) -> ControlTokens:
        return _cached(tuple(sorted({m for m in markers if len(m) >= _MIN_MARKER and not m.isspace()})))

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ControlTokens:
        """The tokenizer's special and added tokens that are not plain words, its chat template's literal
        markers, and the common formats' markers."""
        return cls.of(markers_of(tokenizer) + COMMON_MARKERS)

    @functools.cached_property
    def _exact(self) -> re.Pattern[str]:
        return re.compile(_trie_pattern(self.markers, "") or r"(?!x)x")

    @functools.cached_property
    def _fuzzy(self) -> re.Pattern[str]:
        folded = {fold(m)[0] for m in self.markers}
        return re.compile(_trie_pattern(folded, _SPACE) or r"(?!x)x")

    def find(self, text: str) -> list[str]:
        """The markers and look-alikes in ``text``, as written there."""
        folded, origin = fold(text)
        return [text[origin[m.start()] : origin[m.end() - 1] + 1] for m in self._fuzzy.finditer(folded)]

    def strip(self, text: str) -> str:
        """``text`` without any marker or look-alike of one (each replaced by a space)."""
        while True:  # removing one must not assemble another from what is left around it
            folded, origin = fold(text)
            spans = [(origin[m.start()], origin[m.end() - 1] + 1) for m in self._fuzzy.finditer(folded)]
            if not spans:
                return text
            pieces, last = [], 0
            for start, end in spans:
                pieces.append(text[last:start])
                pieces.append(" ")
                last = end
            pieces.append(text[last:])
            text = "".join(pieces)

    def defang(self, text: str) -> str:
        """The caller's text with each exact marker broken up (a space after its first character)."""
        if not self.markers:
            return text
        return self._exact.sub(lambda m: m.group()[0] + " " + m.group()[1:], text)


@functools.lru_cache(maxsize=64)
def _cached(markers: tuple[str, ...]) -> ControlTokens:
    return ControlTokens(markers)


def markers_of(tokenizer: Any) -> tuple[str, ...]:
    """A tokenizer's markers: special tokens, added tokens that are not plain words, template markers."""
    found: set[str] = set()
    for token in getattr(tokenizer, "all_special_tokens", None) or ():
        found.add(str(token))
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for token in added.values():
        content = str(getattr(token, "content", token))
        if getattr(token, "special", False) or not content.strip().replace("_", "").isalnum():
            found.add(content)
    template = getattr(tokenizer, "chat_template", None)
    sources = template.values() if isinstance(template, dict) else [template] if isinstance(template, str) else []
    for source in sources:
        found.update(_TEMPLATE_MARKERS.findall(source))
    return tuple(sorted(m for m in found if len(m) >= _MIN_MARKER and m.strip() == m))
