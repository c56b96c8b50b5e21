"""Thin resolvers: GraphQL arguments -> ``InferRequest``, toolkit results -> GraphQL shapes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from graphql import GraphQLInputObjectType, GraphQLResolveInfo, GraphQLSchema, build_schema

from toolkit.conversation.records import ConversationArg
from toolkit.errors import ClientGone, Forbidden, InvalidRequest, RequestTimeout, UnknownConversation
from toolkit.params import PARAMS, GenerationParams, InferRequest, Turn
from toolkit.protocol import Service
from toolkit.results import Done, InferResult, SearchFinished, SearchStarted, StreamEvent, Token
from toolkit.search import SearchOutcome
from toolkit.wire import camel, to_wire

T = TypeVar("T")
MAX_QUERY = 2000  # characters of a search query (service.search_query makes them at most 300)
SCHEMA_FILE = Path(__file__).with_name("schema.graphql")
PARAM_NAMES = {camel(name): name for name in PARAMS}  # GraphQL's GenerationInput, from the declaration
FIELD_NAMES = {  # toolkit field names -> GraphQL argument names, for error messages
    "web_search": "webSearch",
    "system_prompt": "systemPrompt",
    "request_id": "requestId",
    "run_record": "runRecord",
    "conversation_id": "conversationId",
    "timeout_s": "timeoutSeconds",
    **{f"params.{snake}": f"params.{camel}" for camel, snake in PARAM_NAMES.items()},
}


@dataclass
class Context:
    """What resolvers get: the service, and a place to register cleanups for when the client goes away."""

    service: Service  # InferenceService, or anything with its interface
    client: str = ""
    admin: bool = True  # may load and unload adapters (without API keys, everyone may)
    owner: str = ""  # the caller's identity: its request ids are its own (see InferenceService.cancel)
    on_close: list[Callable[[], object]] = field(default_factory=list)


def graphql_field(name: str) -> str:
    """A toolkit field name as GraphQL says it: ``params.max_new_tokens`` -> ``params.maxNewTokens``,
    ``run_record.search`` -> ``runRecord.search`` (what lies inside a JSON argument keeps its names)."""
    if name in FIELD_NAMES:
        return FIELD_NAMES[name]
    head = re.match(r"[A-Za-z_]*", name).group()  # type: ignore[union-attr]
    return FIELD_NAMES.get(head, head) + name[len(head) :]


def to_request(args: dict[str, Any], owner: str = "") -> InferRequest:
    params = {PARAM_NAMES[k]: v for k, v in (args.get("params") or {}).items() if v is not None}
    request_id = args.get("requestId")
    extra: dict[str, Any] = {"request_id": request_id} if request_id is not None else {}
    if args.get("timeoutSeconds") is not None:
        extra["timeout_s"] = args["timeoutSeconds"]
    return InferRequest(
        prompt=args["prompt"],
        history=tuple(Turn(t["role"].lower(), t["content"]) for t in args.get("history") or ()),
        system_prompt=args.get("systemPrompt"),
        web_search=bool(args.get("webSearch")),
        model=args.get("model"),
        adapter=args.get("adapter"),
        params=GenerationParams(**params),
        owner=owner,
        **extra,
    )


def search_arg(args: dict[str, Any]) -> dict[str, Any]:
    """The ``search`` argument (a snapshot to ground in) as the service's ``search=`` keyword, checked."""
    snapshot = args.get("search")
    return {} if snapshot is None else {"search": SearchOutcome.from_dict(snapshot, where="search")}


def conversation_arg(args: dict[str, Any]) -> ConversationArg:
    """``conversationId`` to continue; else a new conversation unless ``keep: false``."""
    conversation_id = args.get("conversationId")
    if conversation_id is not None:
        return str(conversation_id)
    return True if args.get("keep", True) is not False else None


def result_dict(result: InferResult) -> dict[str, Any]:
    wire = to_wire(result)
    wire["timings"]["tokensPerSecond"] = result.tokens_per_s
    return dict(wire)


def event_dict(event: StreamEvent) -> dict[str, Any]:
    if isinstance(event, SearchStarted):
        return {"type": "SEARCH_STARTED", "requestId": event.request_id, "query": event.query}
    if isinstance(event, SearchFinished):
        return {
            "type": "SEARCH_FINISHED",
            "requestId": event.request_id,
            "searchStatus": event.status.upper(),
            "searchMessage": event.message,
            "sources": to_wire(event.sources),
        }
    if isinstance(event, Token):
        # ``text`` (the answer so far) only for clients that select it: a callable resolves only when selected
        return {"type": "TOKEN", "requestId": event.request_id, "delta": event.delta, "text": lambda *_: event.text}
    assert isinstance(event, Done)
    return {
        "type": "DONE",
        "requestId": event.result.id,
        "text": event.result.text,
        "result": result_dict(event.result),
    }


# ----- resolvers --------------------------------------------------------------------


def resolve_health(_: Any, info: GraphQLResolveInfo) -> dict[str, Any]:
    return dict(to_wire(info.context.service.health()))


def resolve_models(_: Any, info: GraphQLResolveInfo) -> list[dict[str, Any]]:
    return list(to_wire(info.context.service.models()))


async def _cancelled_with_client(context: Context, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` as a task that the client going away cancels: this request, the one this task runs, and
    no other (not one that happens to have the same id: a refused duplicate's disconnect touches nothing)."""
    task = asyncio.ensure_future(work)
    context.on_close.append(task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # this resolver itself is being cancelled (the WebSocket closed)
        raise ClientGone("the client closed the connection; the request was cancelled") from None


async def resolve_infer(_: Any, info: GraphQLResolveInfo, **args: Any) -> dict[str, Any]:
    context: Context = info.context
    request = to_request(args, context.owner)
    search = search_arg(args)
    conversation = conversation_arg(args)
    result = await _cancelled_with_client(context, context.service.ainfer(request, conversation=conversation, **search))
    if result.finish_reason == "timeout" and not result.text:
        raise RequestTimeout(
            f"the request timed out after {result.timings.total_s:.1f} s before it produced any text; "
            "retry later, or raise REQUEST_TIMEOUT"
        )
    return result_dict(result)


async def resolve_replay(_: Any, info: GraphQLResolveInfo, runRecord: Any, force: bool = False) -> dict[str, Any]:
    context: Context = info.context
    # as for infer: the client going away cancels the replay's generation
    replay = await _cancelled_with_client(context, context.service.areplay(runRecord, force=force, owner=context.owner))
    wire = dict(to_wire(replay))
    if replay.result is not None:
        wire["result"] = result_dict(replay.result)
    return wire


def resolve_cancel(_: Any, info: GraphQLResolveInfo, requestId: str) -> bool:
    """Only the caller's own requests: someone else's id answers false, as an unknown one does."""
    return bool(info.context.service.cancel(requestId, owner=info.context.owner))


async def subscribe_infer(_: Any, info: GraphQLResolveInfo, **args: Any) -> AsyncIterator[dict[str, Any]]:
    context: Context = info.context
    request = to_request(args, context.owner)
    context.service.validate(request)  # bad input fails the subscription at once, before any event
    search = search_arg(args)
    conversation = conversation_arg(args)
    if isinstance(conversation, str):
        await _conversation(context, conversation)  # an unknown one too

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for event in context.service.astream(request, conversation=conversation, **search):
            yield event_dict(event)

    return events()


async def resolve_search(_: Any, info: GraphQLResolveInfo, query: str) -> dict[str, Any]:
    """The server's web search, as a snapshot (``SearchOutcome.to_dict``): off the event loop, it blocks."""
    if not query.strip() or len(query) > MAX_QUERY:
        raise InvalidRequest("query", f"must be 1 to {MAX_QUERY} characters")
    outcome = await asyncio.to_thread(info.context.service.search, query)
    return outcome.to_dict()


async def _conversation(context: Context, conversation_id: str, field: str = "conversation_id") -> dict[str, Any]:
    found = await asyncio.to_thread(context.service.conversation_info, conversation_id, context.owner)
    if found is None:
        raise UnknownConversation(conversation_id, field)
    return dict(to_wire(found))


async def resolve_conversations(
    _: Any, info: GraphQLResolveInfo, query: str | None = None, first: int = 50, before: str | None = None
) -> list[dict[str, Any]]:
    context: Context = info.context
    found = await asyncio.to_thread(context.service.conversations, query, first, before, context.owner)
    return list(to_wire(found))


async def resolve_conversation(_: Any, info: GraphQLResolveInfo, id: str) -> dict[str, Any] | None:
    try:
        return await _conversation(info.context, id, "id")
    except UnknownConversation:
        return None


async def resolve_rename_conversation(_: Any, info: GraphQLResolveInfo, id: str, title: str) -> dict[str, Any]:
    context: Context = info.context
    return dict(to_wire(await asyncio.to_thread(context.service.rename_conversation, id, title, context.owner)))


async def resolve_delete_conversation(_: Any, info: GraphQLResolveInfo, id: str) -> bool:
    context: Context = info.context
    return bool(await asyncio.to_thread(context.service.delete_conversation, id, context.owner))


def resolve_adapters(_: Any, info: GraphQLResolveInfo, model: str | None = None) -> list[dict[str, Any]]:
    return list(to_wire(info.context.service.adapters(model)))


def _admin(info: GraphQLResolveInfo) -> Any:
    if not info.context.admin:
        raise Forbidden("loading and unloading adapters needs an admin key (one of ADMIN_API_KEYS)")
    return info.context.service


async def resolve_load_adapter(
    _: Any, info: GraphQLResolveInfo, name: str, path: str | None = None, model: str | None = None
) -> dict[str, Any]:
    service = _admin(info)
    loop = asyncio.get_running_loop()  # reading the files and injecting the layers: off the event loop
    adapter = await loop.run_in_executor(None, lambda: service.load_adapter(name, path, model=model))
    return dict(to_wire(adapter))


async def resolve_unload_adapter(
    _: Any, info: GraphQLResolveInfo, name: str, model: str | None = None
) -> dict[str, Any]:
    service = _admin(info)
    loop = asyncio.get_running_loop()  # waits for the adapter's running requests
    adapter = await loop.run_in_executor(None, lambda: service.unload_adapter(name, model=model))
    return dict(to_wire(adapter))


def make_schema() -> GraphQLSchema:
    schema = build_schema(SCHEMA_FILE.read_text())
    assert schema.query_type and schema.mutation_type and schema.subscription_type
    schema.query_type.fields["health"].resolve = resolve_health
    schema.query_type.fields["models"].resolve = resolve_models
    schema.query_type.fields["adapters"].resolve = resolve_adapters
    schema.query_type.fields["search"].resolve = resolve_search
    schema.query_type.fields["conversations"].resolve = resolve_conversations
    schema.query_type.fields["conversation"].resolve = resolve_conversation
    schema.mutation_type.fields["renameConversation"].resolve = resolve_rename_conversation
    schema.mutation_type.fields["deleteConversation"].resolve = resolve_delete_conversation
    schema.mutation_type.fields["loadAdapter"].resolve = resolve_load_adapter
    schema.mutation_type.fields["unloadAdapter"].resolve = resolve_unload_adapter
    schema.mutation_type.fields["infer"].resolve = resolve_infer
    schema.mutation_type.fields["cancel"].resolve = resolve_cancel
    schema.mutation_type.fields["replay"].resolve = resolve_replay
    stream = schema.subscription_type.fields["inferStream"]
    stream.subscribe = subscribe_infer
    stream.resolve = lambda event, info, **args: event
    generation = schema.type_map["GenerationInput"]
    assert isinstance(generation, GraphQLInputObjectType)
    for name, spec in PARAMS.items():  # described by the declarations, not by hand in schema.graphql
        generation.fields[camel(name)].description = spec.describe()
    return schema
