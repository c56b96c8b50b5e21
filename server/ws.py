"""``/graphql`` over WebSocket: the graphql-transport-ws protocol (graphql-ws PROTOCOL.md), with the same
keys, rate limits and origins as GraphQL over HTTP (``server.handlers``)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import tornado.websocket
from graphql import GraphQLError, OperationType

from server.gateway import Caller, Gateway, RequestError, error, refused
from server.handlers import JSON, origin_allowed, too_many_wrong_keys
from server.resolvers import Context
from server.security import ApiKeys, FailedKeys
from toolkit.client_wire import SESSION_HEADER
from toolkit.errors import ToolkitError

log = logging.getLogger("server")

PROTOCOL = "graphql-transport-ws"


class GraphQLWebSocket(tornado.websocket.WebSocketHandler):
    """``/graphql`` over WebSocket: the graphql-transport-ws protocol (graphql-ws PROTOCOL.md)."""

    def initialize(self, gateway: Gateway, failed_keys: FailedKeys) -> None:
        self.gateway = gateway
        self.failed_keys = failed_keys
        self.acknowledged = False
        self.init_received = False
        self.caller: Caller | None = None  # set by connection_init
        self.subscriptions: dict[str, asyncio.Task[None]] = {}
        self.contexts: dict[str, Context] = {}
        self._init_timer: asyncio.TimerHandle | None = None

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(self.request, self.gateway.settings.cors_origins)

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """The handshake; refused with 429 for an address that sent too many wrong keys (every operation over
        the socket needs one when keys are on)."""
        wait = self.failed_keys.wait(self.request.remote_ip or "")
        if wait is not None:
            refusal = refused(too_many_wrong_keys(wait))
            self.set_status(refusal.status)
            for name, value in refusal.headers.items():
                self.set_header(name, value)
            self.set_header("Content-Type", f"{JSON}; charset=utf-8")
            self.finish(json.dumps({"errors": refusal.errors}))
            return
        await super().get(*args, **kwargs)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return PROTOCOL if PROTOCOL in subprotocols else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        if self.selected_subprotocol != PROTOCOL:
            self.close(4406, "Subprotocol not acceptable: use graphql-transport-ws")
            return
        loop = asyncio.get_running_loop()
        self._init_timer = loop.call_later(self.gateway.settings.ws_init_timeout_s, self._init_timeout)

    def _init_timeout(self) -> None:
        if not self.acknowledged:
            self.close(4408, "Connection initialisation timeout")

    def _send(self, message: dict[str, Any]) -> Any:
        try:
            return self.write_message(json.dumps(message))
        except tornado.websocket.WebSocketClosedError:
            return None

    def on_message(self, message: str | bytes) -> None:
        # Returns at once: each subscription runs in its own task, so the next frame can be read.
        try:
            msg = json.loads(message)
        except RecursionError:
            self.close(4400, "Invalid message: nested too deeply")
            return
        except ValueError:
            self.close(4400, "Invalid message: not JSON")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self.close(4400, "Invalid message: no type")
            return
        kind = msg["type"]
        if kind == "connection_init":
            self._connection_init(msg.get("payload"))
        elif kind == "ping":
            self._send({"type": "pong"})
        elif kind == "pong":
            pass
        elif kind == "subscribe":
            self._subscribe(msg)
        elif kind == "complete":
            task = self.subscriptions.pop(str(msg.get("id")), None)
            if task is not None:
                task.cancel()
        else:
            self.close(4400, f"Invalid message type {kind!r}")

    def _connection_init(self, payload: Any) -> None:
        if self.init_received:
            self.close(4429, "Too many initialisation requests")
            return
        self.init_received = True
        if payload is not None and not isinstance(payload, dict):
            self.close(4400, "Invalid message: the connection_init payload must be an object")
            return
        presented = _key_from_payload(payload or {}) or self.gateway.keys.from_authorization(
            self.request.headers.get("Authorization")
        )
        address = self.request.remote_ip or ""
        wait = self.failed_keys.wait(address)
        if wait is not None:  # sockets opened before the address was refused: the key is not looked at
            self.close(4429, f"Too many wrong API keys from this address: retry in {wait} s")
            return
        if not self.gateway.keys.check(presented):
            if presented is not None:
                self.failed_keys.failed(address)
            self.close(4403, "Forbidden")
            return
        self.caller = self.gateway.caller(presented, address, self.request.headers.get(SESSION_HEADER))
        self.acknowledged = True
        if self._init_timer:
            self._init_timer.cancel()
        self._send({"type": "connection_ack"})

    def _subscribe(self, msg: dict[str, Any]) -> None:
        if not self.acknowledged:
            self.close(4401, "Unauthorized")
            return
        sub_id, payload = msg.get("id"), msg.get("payload")
        if not isinstance(sub_id, str) or not sub_id or not isinstance(payload, dict):
            self.close(4400, "Invalid message: subscribe needs an id and a payload")
            return
        if sub_id in self.subscriptions:
            self.close(4409, f"Subscriber for {sub_id} already exists")
            return
        self.subscriptions[sub_id] = asyncio.create_task(self._run(sub_id, payload))

    async def _run(self, sub_id: str, payload: dict[str, Any]) -> None:
        gateway = self.gateway
        caller = self.caller
        assert caller is not None  # subscribe is refused before connection_ack
        context = Context(
            service=gateway.service, client=self.request.remote_ip or "", admin=caller.admin, owner=caller.identity
        )
        stream = None
        try:
            try:
                query, variables = payload.get("query"), payload.get("variables")
                prepared = await gateway.admit(query, variables, payload.get("operationName"), caller)
            except RequestError as exc:
                self._send({"id": sub_id, "type": "error", "payload": exc.errors})
                return
            if prepared.kind == OperationType.SUBSCRIPTION:
                outcome = await gateway.subscribe(prepared, context)
                if isinstance(outcome, dict):
                    await self._next(sub_id, outcome)
                else:
                    stream = outcome
                    async for item in stream:
                        await self._next(sub_id, item)
            else:
                await self._next(sub_id, await gateway.execute(prepared, context))
            context.on_close.clear()  # finished: nothing left to cancel (the id may be reused)
            self._send({"id": sub_id, "type": "complete"})
        except asyncio.CancelledError:
            pass  # the client completed it, or went away: the generation is cancelled below
        except ToolkitError as exc:  # raised while streaming (overloaded, prompt too long, model error)
            body = {"data": None, "errors": [gateway.format_error(GraphQLError(exc.message, original_error=exc))]}
            await self._next(sub_id, body)
            self._send({"id": sub_id, "type": "complete"})
        except Exception:
            log.exception("subscription %s failed", sub_id)
            self._send(
                {
                    "id": sub_id,
                    "type": "error",
                    "payload": [error("internal error; it has been logged", ToolkitError.code)],
                }
            )
        finally:
            if stream is not None:
                await stream.aclose()  # type: ignore[attr-defined]
            for cleanup in context.on_close:
                cleanup()
            if self.subscriptions.get(sub_id) is asyncio.current_task():
                del self.subscriptions[sub_id]

    async def _next(self, sub_id: str, body: dict[str, Any]) -> None:
        future = self._send({"id": sub_id, "type": "next", "payload": body})
        if future is not None:
            await future  # backpressure: a slow client slows its own stream, not the server

    def on_close(self) -> None:
        if self._init_timer:
            self._init_timer.cancel()
        for task in self.subscriptions.values():
            task.cancel()
        self.subscriptions.clear()


def _key_from_payload(payload: dict[str, Any]) -> str | None:
    """The key in a connection_init payload: GraphiQL sends its headers editor's content as the payload."""
    for name in ("Authorization", "authorization"):
        if isinstance(payload.get(name), str):
            return ApiKeys.from_authorization(payload[name])
    headers = payload.get("headers")
    if isinstance(headers, dict):
        for name in ("Authorization", "authorization"):
            if isinstance(headers.get(name), str):
                return ApiKeys.from_authorization(headers[name])
    for name in ("apiKey", "api_key"):
        if isinstance(payload.get(name), str):
            return str(payload[name])
    return None
