"""The checks an evaluation applies to each answer, in promptfoo's names where it has them.

promptfoo's: ``equals``, ``contains``, ``icontains``, ``contains-any``, ``icontains-any``, ``contains-all``,
``icontains-all``, ``regex``, ``starts-with``, ``is-json``, ``levenshtein`` (``threshold``: the most edits,
default 5), ``latency`` (``threshold``: milliseconds), and ``llm-rubric`` (a judge model, by name, asked
whether the answer meets ``value``; its own run record is kept). This toolkit's own: ``grounded`` (the share
of claim sentences the grounding check supports is at least ``value``), ``cites`` (every supported claim
carries a correct ``[n]``, and none cites a wrong one), ``no-loop`` (the loop guard did not end it, and no 6
words come three times) and ``finish-reason`` (``value``: stop, length, ...). ``not-`` before any type
negates it (``not-contains``, ``not-icontains``).

A check never hangs a run: ``regex`` runs in the ``regex`` package's engine (the one that validated the
pattern at load), for ``REGEX_TIMEOUT_S`` at most and without holding the GIL; ``levenshtein`` compares
``MAX_LEVENSHTEIN_CELLS`` character pairs at most. A check that cannot give an answer a verdict (out of time,
an answer too long or nested too deeply for it) raises ``CheckError``: its cell is an error cell, not a failure
of the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import regex

from toolkit.errors import InvalidRequest

TEXT_TYPES = ("equals", "contains", "icontains", "regex", "starts-with")
LIST_TYPES = ("contains-any", "icontains-any", "contains-all", "icontains-all")
TYPES = (
    *TEXT_TYPES,
    *LIST_TYPES,
    "is-json",
    "levenshtein",
    "latency",
    "grounded",
    "cites",
    "no-loop",
    "finish-reason",
    "llm-rubric",
)
FINISH_REASONS = ("stop", "length", "cancelled", "timeout", "repetition")
# what each type reads besides its type (default: a value); anything else given would go unchecked
TAKES: dict[str, tuple[str, ...]] = {
    "is-json": (),
    "no-loop": (),
    "cites": (),
    "latency": ("threshold",),
    "levenshtein": ("value", "threshold"),
    "grounded": ("value", "threshold"),
}
REGEX_TIMEOUT_S = 1.0  # a regex check's time on one answer at most (catastrophic backtracking ends there)
MAX_LEVENSHTEIN_CELLS = 5_000_000  # character pairs a levenshtein check compares at most (about a second)
RUBRIC_PROMPT = (
    "Here is an answer to a question.\n\nQuestion: {question}\n\nAnswer: {answer}\n\n"
    "Does the answer meet this requirement: {rubric}\nAnswer yes or no."
)


class CheckError(Exception):
    """A check that cannot give this answer a verdict: it ran out of time, or the answer is beyond what it can
    read. Not the model's failure: the cell is an error cell with ``code`` (``CHECK_TIMEOUT``, ``CHECK_ERROR``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Check:
    type: str  # one of TYPES
    value: Any = None
    threshold: float | None = None
    negate: bool = False
    judge: str | None = None  # llm-rubric: the model that judges
    weight: float = 1.0  # in its sample's weighted score; 0: reported, does not decide
    metric: str | None = None  # the named metric it counts toward

    @property
    def label(self) -> str:
        return ("not-" if self.negate else "") + self.type

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and v is not False}
        if self.weight == 1.0:
            del out["weight"]
        return out


@dataclass(frozen=True)
class Score:
    check: str  # the check's label
    passed: bool
    score: float  # 0..1
    reason: str
    record_id: str | None = None  # llm-rubric: the judge's answer's run record
    weight: float = 1.0  # the check's
    metric: str | None = None  # the check's named metric (or its sample's)


def verdict(scores: Sequence[Score], threshold: float | None = None) -> tuple[bool, float]:
    """Whether a sample passed, and its weighted score (promptfoo's rule): the weighted mean of its checks'
    scores, checks of weight 0 reported only; without a ``threshold`` every check that weighs must pass, with
    one the weighted mean must reach it."""
    weighing = [s for s in scores if s.weight > 0]
    total = sum(s.weight for s in weighing)
    mean = sum(s.weight * s.score for s in weighing) / total if total else 0.0
    if not weighing:
        return False, 0.0
    passed = all(s.passed for s in weighing) if threshold is None else mean >= threshold - 1e-9
    return passed, round(mean, 4)


def parse_check(spec: Any, models: Collection[str] | None = None) -> Check:
    """A check from its promptfoo-shaped mapping; ``InvalidRequest`` naming the field that is wrong."""
    if not isinstance(spec, dict):
        raise InvalidRequest("check", "must be a mapping with a 'type'")
    kind = spec.get("type")
    if not isinstance(kind, str):
        raise InvalidRequest("type", "is missing")
    negate = kind.startswith("not-")
    base = kind.removeprefix("not-")
    if base not in TYPES:
        raise InvalidRequest("type", f"unknown assertion type {kind!r}; known: {', '.join(TYPES)} (and not-<type>)")
    unknown = set(spec) - {"type", "value", "threshold", "provider", "judge", "weight", "metric"}
    if unknown:
        raise InvalidRequest(
            sorted(unknown)[0], "is not a field of a check (type, value, threshold, judge, weight, metric)"
        )
    takes = TAKES.get(base, ("value",))
    for name in ("value", "threshold"):
        if spec.get(name) is not None and name not in takes:
            what = "neither a value nor a threshold" if not takes else f"only {' and '.join(takes)}"
            raise InvalidRequest(name, f"{base} takes {what}; it would not be checked")
    if base != "llm-rubric" and (spec.get("judge") is not None or spec.get("provider") is not None):
        raise InvalidRequest("judge" if spec.get("judge") is not None else "provider", "only llm-rubric has a judge")
    value, threshold = spec.get("value"), spec.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise InvalidRequest("threshold", f"must be a number, got {threshold!r}")
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
        raise InvalidRequest("weight", f"must be a number >= 0 (0: reported, does not decide), got {weight!r}")
    metric = spec.get("metric")
    if metric is not None and (not isinstance(metric, str) or not metric.strip()):
        raise InvalidRequest("metric", "must be a metric's name (a non-empty string)")
    judge = None
    if base in TEXT_TYPES or base == "llm-rubric":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value) == "":
            raise InvalidRequest("value", f"{base} needs a non-empty string value")
        value = str(value)
    if base == "regex":
        try:
            regex.compile(str(value))  # the engine that runs it (``regex``), so that what loads runs
        except regex.error as exc:
            raise InvalidRequest("value", f"not a valid regular expression: {exc}") from None
    elif base in LIST_TYPES:
        if not isinstance(value, list) or not value or not all(isinstance(v, (str, int, float)) for v in value):
            raise InvalidRequest("value", f"{base} needs a list of strings")
        value = [str(v) for v in value]
    elif base == "levenshtein":
        if not isinstance(value, str):
            raise InvalidRequest("value", "levenshtein needs the expected string")
        threshold = 5 if threshold is None else threshold
    elif base == "latency":
        if threshold is None:
            raise InvalidRequest("threshold", "latency needs a threshold in milliseconds")
    elif base == "grounded":
        share = value if value is not None else threshold if threshold is not None else 1.0
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise InvalidRequest("value", "grounded needs the share of supported sentences, 0..1")
        value = float(share)
    elif base == "finish-reason":
        if value not in FINISH_REASONS:
            raise InvalidRequest("value", f"must be one of {', '.join(FINISH_REASONS)}")
    elif base == "llm-rubric":
        judge = spec.get("judge", spec.get("provider"))
        if not isinstance(judge, str) or not judge:
            raise InvalidRequest("judge", "llm-rubric needs the judge model's name (judge: <a model of the service>)")
        if models is not None and judge not in models:
            known = ", ".join(sorted(models))
            raise InvalidRequest("judge", f"{judge!r} is not a configured model (the service serves {known})")
    return Check(
        base,
        value,
        float(threshold) if threshold is not None else None,
        negate,
        judge,
        float(weight),
        metric.strip() if metric else None,
    )


Judge = Callable[[str, str], tuple[bool | None, str | None]]  # (judge's name, question) -> (yes?, record id)


def score(check: Check, result: Any, question: str, judge: Judge | None = None, metric: str | None = None) -> Score:
    """``check`` applied to ``result`` (an ``InferResult``), negated where it says so; ``metric``: the sample's
    named metric, where the check names none. ``CheckError`` where it cannot give a verdict."""
    passed, value, reason, record = _apply(check, result, question, judge)
    if check.negate:
        passed, value = not passed, 1.0 - value
        reason = "not: " + reason
    return Score(check.label, passed, round(value, 4), reason, record, check.weight, check.metric or metric)


def _apply(check: Check, result: Any, question: str, judge: Judge | None) -> tuple[bool, float, str, str | None]:
    text: str = result.text
    kind, value = check.type, check.value
    low = text.lower()
    if kind == "equals":
        ok = text.strip() == value.strip()
        return ok, float(ok), "equal" if ok else "differs", None
    if kind in ("contains", "icontains"):
        ok = (value.lower() in low) if kind == "icontains" else (value in text)
        return ok, float(ok), f"{'has' if ok else 'lacks'} {value!r}", None
    if kind in LIST_TYPES:
        fold = kind.startswith("i")
        hits = [v for v in value if (v.lower() in low if fold else v in text)]
        need_all = kind.endswith("all")
        ok = len(hits) == len(value) if need_all else bool(hits)
        return ok, len(hits) / len(value), f"has {len(hits)} of {len(value)}", None
    if kind == "regex":
        try:  # concurrent: the GIL is let go, so that Ctrl-C, the engine and the other cells go on meanwhile
            ok = regex.search(value, text, timeout=REGEX_TIMEOUT_S, concurrent=True) is not None
        except TimeoutError:
            raise CheckError(
                "CHECK_TIMEOUT",
                f"regex check timed out after {REGEX_TIMEOUT_S:g} s on a {len(text)}-character answer: "
                "simplify the pattern (nested or overlapping repeats backtrack without end)",
            ) from None
        return ok, float(ok), "matches" if ok else "no match", None
    if kind == "starts-with":
        ok = text.lstrip().startswith(value)
        return ok, float(ok), "starts with it" if ok else "starts otherwise", None
    if kind == "is-json":
        try:
            json.loads(text.strip())
            return True, 1.0, "valid JSON", None
        except ValueError as exc:
            return False, 0.0, f"not JSON ({exc})", None
        except RecursionError:
            raise CheckError(
                "CHECK_ERROR", f"is-json: the {len(text)}-character answer nests deeper than the JSON parser goes"
            ) from None
    if kind == "levenshtein":
        answer, expected = text.strip(), value.strip()
        limit = check.threshold or 0
        if len(answer) * len(expected) > MAX_LEVENSHTEIN_CELLS:
            gap = abs(len(answer) - len(expected))  # edits at least: when that many fail it anyway, say so
            if gap > limit and gap >= max(1, len(value)):
                return False, 0.0, f"at least {gap} edits (at most {limit:g})", None
            raise CheckError(
                "CHECK_ERROR",
                f"levenshtein: a {len(answer)}-character answer against a {len(expected)}-character value is "
                f"more than {MAX_LEVENSHTEIN_CELLS:,} character pairs (MAX_LEVENSHTEIN_CELLS) to compare",
            )
        distance = levenshtein(answer, expected)
        return (
            distance <= limit,
            max(0.0, 1 - distance / max(1, len(value))),
            f"{distance} edits (at most {limit:g})",
            None,
        )
    if kind == "latency":
        millis = result.timings.total_s * 1000
        limit = check.threshold or 0
        return millis <= limit, float(millis <= limit), f"{millis:.0f} ms (at most {limit:g})", None
    if kind == "grounded":
        grounding = result.grounding
        if grounding is None or not grounding.sentences:
            return False, 0.0, "no grounded claims (no sources, or no claim)", None
        share = grounding.supported / len(grounding.sentences)
        return share >= value, share, grounding.summary, None
    if kind == "cites":
        grounding = result.grounding
        if grounding is None or not grounding.sentences:
            return False, 0.0, "no grounded claims", None
        bad = [s for s in grounding.sentences if s.verdict == "miscited"]
        uncited = [s for s in grounding.sentences if s.verdict == "supported" and s.best_source not in s.cited]
        ok = not bad and not uncited
        total = len(grounding.sentences)
        return ok, 1 - (len(bad) + len(uncited)) / total, f"{len(bad)} miscited, {len(uncited)} uncited", None
    if kind == "no-loop":
        from toolkit.loopguard import repeats

        looped = result.finish_reason == "repetition" or repeats(text)
        return not looped, float(not looped), "looped" if looped else "no loop", None
    if kind == "finish-reason":
        ok = result.finish_reason == value
        return ok, float(ok), f"finished: {result.finish_reason}", None
    if kind == "llm-rubric":
        if judge is None or check.judge is None:
            return False, 0.0, "no judge", None
        verdict, record = judge(check.judge, RUBRIC_PROMPT.format(question=question, answer=text, rubric=value))
        if verdict is None:
            return False, 0.0, f"the judge {check.judge} said neither yes nor no", record
        return verdict, float(verdict), f"the judge {check.judge} said {'yes' if verdict else 'no'}", record
    raise AssertionError(kind)  # pragma: no cover


def levenshtein(a: str, b: str) -> int:
    """Edits (insert, delete, replace) from ``a`` to ``b``."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
