"""Plain HTTP helpers for talking to the GraphQL server in tests (urllib only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

GQL_RESPONSE = "application/graphql-response+json"


def post(
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    content_type: str = "application/json",
    accept: str | None = GQL_RESPONSE,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    h = {"Content-Type": content_type, **(headers or {})}
    if accept:
        h["Accept"] = accept
    request = urllib.request.Request(url, data=data, headers=h, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text.decode(errors="replace")
        return exc.code, exc.headers, payload


def get(url: str, query: str, accept: str | None = GQL_RESPONSE) -> tuple[int, Any, Any]:
    full = url + "?" + urllib.parse.urlencode({"query": query})
    request = urllib.request.Request(full, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def code_of(payload: Any) -> str:
    return payload["errors"][0]["extensions"]["code"]
