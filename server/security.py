"""The names the server answers to, API keys, rate limiting (of requests and of wrong keys) and limits on
what one GraphQL document may ask for."""

from __future__ import annotations

import hmac
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)

from toolkit.errors import InvalidRequest
from toolkit.settings import is_ip

MODEL_FIELDS = frozenset({"infer", "inferStream", "replay", "search"})  # each runs the model or the web search
INTROSPECTION_DEPTH_LIMIT = 25  # GraphiQL's introspection query is about 15 deep
FREE_FIELDS = frozenset({"health", "__typename"})
WILDCARD_ADDRESSES = frozenset({"", "*", "0.0.0.0", "::"})  # bound to every interface: no name of its own
_SINGLE_LABEL = re.compile(r"[a-z0-9_-]+")  # a name without a dot: "server" (a compose service), "myhost"
_SESSION = re.compile(r"[A-Za-z0-9_-]{8,64}")  # a front end's browser-session id (X-Toolkit-Session)
KEY_FAILURES = 10  # wrong API keys one client address may send within KEY_FAILURE_WINDOW_S ...
KEY_FAILURE_WINDOW_S = 60.0  # ... before it is refused (a right key too) until the oldest one is that old


def host_of(header: str) -> str | None:
    """The host name (or IP address, without brackets) of a ``Host`` header's value, in lower case, without
    the port and a trailing dot; None for a value that is not ``host[:port]``."""
    value = header.strip().lower()
    if value.startswith("["):  # an IPv6 address: [::1]:8080
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        return name
    if is_ip(value):
        return value  # an IPv6 address without brackets: no port
    name, colon, port = value.rpartition(":")
    if colon:
        if not port.isdigit():
            return None
        value = name
    value = value.rstrip(".")
    return value or None


class AllowedHosts:
    """The names this server answers to, checked on every request's ``Host`` header: the guard against DNS
    rebinding, where a web page on the attacker's domain (``rebind.attacker.example``) has that name resolve
    to this machine, so that the browser sends the attacker's requests here as same-origin ones (with the
    attacker's name in ``Host`` and ``Origin``).

    Accepted: no ``Host`` at all (not a browser); an IP address (rebinding needs a name); ``localhost`` and
    names under ``.localhost`` (the browser resolves them itself); a name without a dot (``server``, a
    compose service, or a machine on the local network: the attacker cannot give one to a page); the name
    the server is bound to, when it is bound to one; and ``names`` (ALLOWED_HOSTS; ``*``: every name).
    A server bound to every interface (0.0.0.0, as in a container) is no exception: its port may be
    published on the user's own machine, where the browser that rebinding abuses runs.
    """

    def __init__(self, names: Iterable[str] = (), bound: str | None = None) -> None:
        wanted = {n.strip().lower().rstrip(".") for n in names}
        if bound is not None and bound.strip().lower() not in WILDCARD_ADDRESSES:
            name = host_of(bound)
            if name is not None:
                wanted.add(name)
        self.any = "*" in wanted
        self.names = frozenset(wanted - {"*"})

    def allows(self, header: str | None) -> bool:
        if header is None or self.any:
            return True
        name = host_of(header)
        if name is None:
            return False
        return (
            is_ip(name)
            or name == "localhost"
            or name.endswith(".localhost")
            or _SINGLE_LABEL.fullmatch(name) is not None
            or name in self.names
        )

    @staticmethod
    def refusal(header: str) -> str:
        """What a refused request is told."""
        name = host_of(header) or header
        return (
            f"this server does not answer to the name {name!r} (the request's Host header): a page on another "
            "site may have made its name point here (DNS rebinding). If it is this server's name, add it to "
            "ALLOWED_HOSTS"
        )


class FailedKeys:
    """Wrong API keys per client address: after ``limit`` of them within ``window_s``, the address is refused
    (with a right key too, or guessing would go on) until the oldest of them is ``window_s`` old; then one
    more try, and so on: at most ``limit`` guesses per window."""

    def __init__(
        self,
        limit: int = KEY_FAILURES,
        window_s: float = KEY_FAILURE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait(self, address: str) -> int | None:
        """Seconds ``address`` must wait before its next try (at least 1), or None if it may try now."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(address)
            if times is None or len(times) < self.limit:
                return None
            left = times[0] + self.window_s - now
            if left <= 0:
                return None
            return max(1, math.ceil(left))

    def failed(self, address: str) -> None:
        now = self._clock()
        with self._lock:
            times = self._failures.setdefault(address, deque(maxlen=self.limit))
            times.append(now)
            if len(self._failures) > 10_000:
                self._prune(now)

    def _prune(self, now: float) -> None:
        stale = [a for a, times in self._failures.items() if times[-1] + self.window_s <= now]
        for address in stale:
            del self._failures[address]


class ApiKeys:
    """Optional bearer keys, compared in constant time. No keys configured: everything is allowed.

    Admin keys are API keys that may also load and unload adapters. Front-end keys (FRONTEND_API_KEYS) are API
    keys of a front end that serves many people, the dashboard: a request with one is rate limited by the
    browser session it names (``X-Toolkit-Session``), so a dozen people on one dashboard are not refused as
    one. Another caller's session header is ignored: naming sessions would let it escape its limit.
    """

    def __init__(self, keys: Iterable[str], admin_keys: Iterable[str] = (), frontend_keys: Iterable[str] = ()) -> None:
        self._admin = tuple(k.encode() for k in admin_keys)
        self._frontend = tuple(k.encode() for k in frontend_keys)
        self._keys = tuple(k.encode() for k in keys) + self._admin + self._frontend

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, presented: str | None) -> bool:
        return not self._keys or _matches(presented, self._keys)

    def is_admin(self, presented: str | None) -> bool:
        return not self._keys or _matches(presented, self._admin)

    @staticmethod
    def from_authorization(header: str | None) -> str | None:
        """The token of an ``Authorization: Bearer <token>`` value."""
        if not header:
            return None
        scheme, _, token = header.strip().partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None

    def bucket(self, presented: str | None, address: str, session: str | None) -> str:
        """The rate-limit bucket: the caller's identity, and for a front end's key the browser session it names."""
        identity = self.identity(presented, address)
        if session and _SESSION.fullmatch(session) and self._frontend and _matches(presented, self._frontend):
            return f"{identity}/session:{session}"
        return identity

    def identity(self, presented: str | None, address: str) -> str:
        """Who to rate limit: a hash prefix of the key, or the client address without keys."""
        if self._keys and presented:
            import hashlib

            return "key:" + hashlib.sha256(presented.encode()).hexdigest()[:16]
        return f"addr:{address}"


def _matches(presented: str | None, keys: tuple[bytes, ...]) -> bool:
    if not presented:
        return False
    candidate = presented.encode()
    ok = False
    for key in keys:  # no early exit: the time does not depend on which key matched
        ok |= hmac.compare_digest(candidate, key)
    return ok


class TokenBucket:
    """``rate_per_minute`` tokens a minute, up to ``burst`` saved, per identity."""

    def __init__(self, rate_per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, identity: str, cost: float = 1.0) -> float | None:
        """Spend ``cost``; None if allowed, else the seconds to wait before retrying."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(identity, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= cost:
                self._buckets[identity] = (tokens - cost, now)
                if len(self._buckets) > 10_000:
                    self._prune(now)
                return None
            self._buckets[identity] = (tokens, now)
            return (cost - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [k for k, (tokens, last) in self._buckets.items() if tokens + (now - last) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]


@dataclass(frozen=True)
class DocumentShape:
    operation: OperationDefinitionNode
    root_fields: frozenset[str]  # field names (not aliases) at the root, through fragments
    model_calls: int  # distinct response keys that run the model or the search (MODEL_FIELDS)
    depth: int  # of the data selection (introspection counts as one level)
    full_depth: int  # everything, introspection included


def select_operation(document: DocumentNode, operation_name: str | None) -> OperationDefinitionNode | None:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is None:
        return operations[0] if len(operations) == 1 else None
    return next((o for o in operations if o.name and o.name.value == operation_name), None)


def shape(document: DocumentNode, operation: OperationDefinitionNode) -> DocumentShape:
    """Root fields and depth, through fragments. Each fragment is measured once (memoized), so a
    chain of fragments that spread the next one twice costs linear, not exponential, time.
    Runs after validation, which rules out fragment cycles."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    root_memo: dict[str, frozenset[tuple[str, str]]] = {}

    def root(selection_set: SelectionSetNode) -> frozenset[tuple[str, str]]:
        keys: set[tuple[str, str]] = set()  # (response key, field name): GraphQL merges equal keys
        for sel in selection_set.selections:
            if isinstance(sel, FieldNode):
                keys.add(((sel.alias or sel.name).value, sel.name.value))
            elif isinstance(sel, InlineFragmentNode):
                keys |= root(sel.selection_set)
            elif isinstance(sel, FragmentSpreadNode) and sel.name.value in fragments:
                name = sel.name.value
                if name not in root_memo:
                    root_memo[name] = root(fragments[name].selection_set)
                keys |= root_memo[name]
        return frozenset(keys)

    depth_memo: dict[tuple[str, bool], int] = {}

    def depth(selection_set: SelectionSetNode | None, introspection: bool) -> int:
        """Nesting depth. Without ``introspection``, ``__schema``/``__type`` count as one level:
        clients such as GraphiQL send a fixed, deep introspection query, bounded on its own."""
        if selection_set is None:
            return 0
        best = 0
        for sel in selection_set.selections:
            if isinstance(sel, FieldNode) and sel.name.value.startswith("__") and not introspection:
                best = max(best, 1)
            elif isinstance(sel, FieldNode):
                best = max(best, 1 + depth(sel.selection_set, introspection))
            elif isinstance(sel, InlineFragmentNode):
                best = max(best, depth(sel.selection_set, introspection))
            elif isinstance(sel, FragmentSpreadNode) and sel.name.value in fragments:
                key = (sel.name.value, introspection)
                if key not in depth_memo:
                    depth_memo[key] = depth(fragments[key[0]].selection_set, introspection)
                best = max(best, depth_memo[key])
        return best

    keys = root(operation.selection_set)
    return DocumentShape(
        operation,
        frozenset(name for _, name in keys),
        sum(1 for _, name in keys if name in MODEL_FIELDS),
        depth(operation.selection_set, introspection=False),
        depth(operation.selection_set, introspection=True),
    )


def limit_errors(doc_shape: DocumentShape, max_depth: int) -> list[GraphQLError]:
    """Errors for documents that ask too much: too deep, or the model more than once."""
    errors = []
    if doc_shape.depth > max_depth:
        errors.append(
            GraphQLError(
                f"the query is {doc_shape.depth} levels deep, over the limit of {max_depth}",
                extensions={"code": InvalidRequest.code, "field": "query", "limit": max_depth},
            )
        )
    if doc_shape.full_depth > max(max_depth, INTROSPECTION_DEPTH_LIMIT):
        limit = max(max_depth, INTROSPECTION_DEPTH_LIMIT)
        errors.append(
            GraphQLError(
                f"the query is {doc_shape.full_depth} levels deep with introspection, over the limit of {limit}",
                extensions={"code": InvalidRequest.code, "field": "query", "limit": limit},
            )
        )
    model_calls = doc_shape.model_calls
    if model_calls > 1:
        errors.append(
            GraphQLError(
                "one operation may run the model or the search once; this one asks for "
                f"infer/inferStream/replay/search {model_calls} times "
                "(through aliases or fragments): send separate requests",
                extensions={"code": InvalidRequest.code, "field": "query", "limit": 1},
            )
        )
    return errors


def count_fields(document: DocumentNode) -> int:
    """Field selections in the whole document, as written (fragments counted once): bounds validation's work."""
    count = 0
    stack: list[Any] = list(document.definitions)
    while stack:
        node = stack.pop()
        if isinstance(node, FieldNode):
            count += 1
        selection_set = getattr(node, "selection_set", None)
        if selection_set is not None:
            stack.extend(selection_set.selections)
    return count


def json_depth(value: Any) -> int:
    """How deeply a JSON value nests lists and objects (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
    return deepest


def is_free(doc_shape: DocumentShape) -> bool:
    """Health checks and __typename cost nothing, so monitoring never gets rate limited."""
    return bool(doc_shape.root_fields) and doc_shape.root_fields <= FREE_FIELDS
