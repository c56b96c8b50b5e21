"""One place that turns a GraphQL request into a result, for HTTP and WebSocket alike.

Admission runs in the order that keeps an outsider's cost low: the caller's key first (no
parsing for a caller without a valid key, except a small public ``health`` query), then the
rate limit, then parsing (with a token limit) and validation (with depth, field-count,
one-model-call and optional no-introspection rules) on a worker thread, so that a costly
document never holds the event loop. Then it executes or subscribes, and formats errors: a
``ToolkitError`` keeps its code, anything unexpected becomes INTERNAL with a request id that is
logged, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    Lexer,
    OperationDefinitionNode,
    OperationType,
    Source,
    StringValueNode,
    TokenKind,
    VariableNode,
    execute,
    parse,
    specified_rules,
    subscribe,
    validate,
)
from graphql.validation import NoSchemaIntrospectionCustomRule

from server.config import ServerSettings
from server.resolvers import Context, graphql_field, make_schema
from server.security import (
    FREE_FIELDS,
    ApiKeys,
    DocumentShape,
    TokenBucket,
    count_fields,
    is_free,
    json_depth,
    limit_errors,
    select_operation,
    shape,
)
from toolkit.errors import InvalidRequest, Overloaded, RateLimited, ToolkitError, Unauthenticated

log = logging.getLogger("server")
DOCUMENT_CACHE_SIZE = 256
# A public health check is small: a document over these bounds is never parsed for a caller without a key.
FREE_DOCUMENT_CHARS = 1000
FREE_DOCUMENT_TOKENS = 120
MAX_VARIABLES_DEPTH = 32  # nesting of the variables' JSON


@dataclass(frozen=True)
class Caller:
    """Who sent a request: request ids and the rate-limit bucket belong to ``identity``."""

    identity: str  # a hash prefix of the API key, or the client address without keys
    authenticated: bool
    admin: bool
    bucket: str = ""  # the rate-limit bucket: the identity, or a front end's browser session (ApiKeys.bucket)


@dataclass
class Prepared:
    """A parsed and validated operation, ready to run."""

    document: DocumentNode
    shape: DocumentShape
    operation_name: str | None
    variables: dict[str, Any] | None

    @property
    def kind(self) -> OperationType:
        return self.shape.operation.operation

    @property
    def public(self) -> bool:
        """``health`` stays public with API keys on (container health checks), and tells nothing secret."""
        return self.kind == OperationType.QUERY and is_free(self.shape)


class RequestError(Exception):
    """The request was refused before execution; ``status`` is for HTTP, ``errors`` for the body.

    ``in_document``: the request itself is well-formed GraphQL over HTTP, its document is in error (it does not
    parse or validate, or asks too much): answered 200 under application/json, as the draft says.
    ``cause``: the toolkit error it stands for (a key, the rate limit), if one does."""

    def __init__(
        self,
        status: int,
        errors: list[dict[str, Any]],
        headers: dict[str, str] | None = None,
        *,
        in_document: bool = False,
        cause: ToolkitError | None = None,
    ) -> None:
        super().__init__(errors[0]["message"] if errors else "bad request")
        self.status = status
        self.errors = errors
        self.headers = headers or {}
        self.in_document = in_document
        self.cause = cause


def error(message: str, code: str, **extensions: Any) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code, **extensions}}


def bad_request(message: str, **extensions: Any) -> RequestError:
    """A request that is not well-formed GraphQL over HTTP (no query, variables not an object, a batch, ...):
    HTTP's 400 BAD_REQUEST whatever the media type (no toolkit error stands for it)."""
    return RequestError(HTTPStatus.BAD_REQUEST, [error(message, "BAD_REQUEST", **extensions)])


def document_error(errors: list[dict[str, Any]]) -> RequestError:
    """A document that does not parse or validate, or asks too much: ``InvalidRequest``'s status."""
    return RequestError(InvalidRequest.status, errors, in_document=True)


def over_limit(message: str, limit: int) -> RequestError:
    """A document over one of the limits on what it may ask (``InvalidRequest`` of the field ``query``)."""
    return document_error([error(message, InvalidRequest.code, field="query", limit=limit)])


def over_token_limit(query: str, limit: int) -> bool:
    """Whether ``query`` has more than ``limit`` tokens (as graphql-core's parser counts them: comments not),
    lexing no further than the limit. A document that does not lex is the parser's to report."""
    lexer = Lexer(Source(query))
    try:
        for _ in range(limit + 1):
            if lexer.advance().kind == TokenKind.EOF:
                return False
    except GraphQLError:
        return False
    return True


class Gateway:
    def __init__(self, service: Any, settings: ServerSettings) -> None:
        self.service = service
        self.settings = settings
        self.schema = make_schema()
        self.keys = ApiKeys(settings.api_keys, settings.admin_keys, settings.frontend_keys)
        self.limiter = TokenBucket(settings.rate_per_minute, settings.rate_burst)
        rules = list(specified_rules)
        if not settings.introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        self.rules = rules
        self.hide_suggestions = not settings.introspection  # "Did you mean …?" would describe the schema
        self._documents: OrderedDict[str, DocumentNode] = OrderedDict()
        # one thread: a flood of costly documents queues behind itself, and the event loop keeps answering
        self._parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graphql-parse")

    # ----- before execution -----------------------------------------------------

    def caller(self, presented: str | None, address: str, session: str | None = None) -> Caller:
        keys = self.keys
        return Caller(
            keys.identity(presented, address),
            keys.check(presented),
            keys.is_admin(presented),
            keys.bucket(presented, address, session),
        )

    def unauthenticated(self, presented: str | None) -> RequestError:
        return refused(Unauthenticated(presented is not None))

    async def admit(
        self, query: Any, variables: Any, operation_name: Any, caller: Caller, presented: str | None = None
    ) -> Prepared:
        """Key, rate limit, then parse and validate: raises ``RequestError`` for a request that cannot run."""
        check_envelope(query, variables, operation_name)
        try:  # without a key, only a small public query gets anywhere: any other answer would tell about the schema
            document = self._documents.get(query)
            if document is not None:
                self._documents.move_to_end(query)
            else:
                document = self._small_public_document(query)
            if document is not None:
                prepared = self._prepared(document, operation_name, variables)
                if prepared.public:
                    return prepared  # health: no key needed, never rate limited
        except RequestError:
            if not caller.authenticated:
                raise self.unauthenticated(presented) from None
            raise
        if not caller.authenticated:
            raise self.unauthenticated(presented)
        try:
            self.check_rate(caller.bucket or caller.identity)
        except RateLimited as exc:
            raise refused(exc) from None
        if document is None:
            loop = asyncio.get_running_loop()
            document = await loop.run_in_executor(self._parser, self._parse_and_validate, query)
            self._cache(query, document)
            prepared = self._prepared(document, operation_name, variables)
        try:  # a full queue refuses now, before the variables (a long history) are coerced and checked
            for model in generating(prepared):
                self.service.check_room(model)
        except Overloaded as exc:
            raise refused(exc) from None
        return prepared

    def _small_public_document(self, query: str) -> DocumentNode | None:
        """A small document asking only ``health``/``__typename``, parsed and validated; else None (unparsed)."""
        if len(query) > FREE_DOCUMENT_CHARS:
            return None
        try:
            document = parse(query, max_tokens=FREE_DOCUMENT_TOKENS)
        except GraphQLError:
            return None
        definitions = document.definitions
        if len(definitions) != 1 or not isinstance(definitions[0], OperationDefinitionNode):
            return None
        operation = definitions[0]
        if operation.operation != OperationType.QUERY or not all(
            isinstance(sel, FieldNode) and sel.name.value in FREE_FIELDS for sel in operation.selection_set.selections
        ):
            return None
        self._validate(document)
        self._cache(query, document)
        return document

    def _parse_and_validate(self, query: str) -> DocumentNode:
        """Parse (with a token limit), count fields, validate. Runs on the parser thread."""
        limit = self.settings.max_query_tokens
        if over_token_limit(query, limit):  # counted here: not read back from the parser's message
            raise over_limit(f"the document has more than {limit} tokens, over the limit (MAX_QUERY_TOKENS)", limit)
        try:
            document = parse(query, max_tokens=limit)
        except GraphQLError as exc:
            raise document_error([{**exc.formatted, "extensions": {"code": "GRAPHQL_PARSE_FAILED"}}]) from None
        fields = count_fields(document)
        limit = self.settings.max_query_fields
        if fields > limit:
            raise over_limit(f"the document selects {fields} fields, over the limit of {limit}", limit)
        self._validate(document)
        return document

    def _validate(self, document: DocumentNode) -> None:
        errors = validate(self.schema, document, self.rules, hide_suggestions=self.hide_suggestions)
        if errors:
            raise document_error([{**e.formatted, "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}} for e in errors])

    def _cache(self, query: str, document: DocumentNode) -> None:
        """Valid documents are kept: a client that sends the same operation again skips parsing and validation."""
        self._documents[query] = document
        self._documents.move_to_end(query)
        if len(self._documents) > DOCUMENT_CACHE_SIZE:
            self._documents.popitem(last=False)

    def _prepared(self, document: DocumentNode, operation_name: str | None, variables: Any) -> Prepared:
        operation = select_operation(document, operation_name)
        if operation is None:
            message = "operationName names no operation in the document"
            if operation_name is None:
                message = "the document has several operations: say which one with operationName"
            raise bad_request(message)
        doc_shape = shape(document, operation)
        limits = limit_errors(doc_shape, self.settings.max_query_depth)
        if limits:
            raise document_error([dict(e.formatted) for e in limits])
        return Prepared(document, doc_shape, operation_name, variables)

    def check_rate(self, identity: str) -> None:
        """``RateLimited`` when ``identity``'s bucket is empty (GraphQL and the OpenAI endpoint share them)."""
        wait = self.limiter.take(identity)
        if wait is not None:
            raise RateLimited(max(1, round(wait + 0.5)))

    def close(self) -> None:
        self._parser.shutdown(wait=False, cancel_futures=True)

    # ----- execution ------------------------------------------------------------

    async def execute(self, prepared: Prepared, context: Context) -> dict[str, Any]:
        return self.format(await self.run(prepared, context))

    async def run(self, prepared: Prepared, context: Context) -> ExecutionResult:
        """Execute, unformatted: its errors keep their original errors (HTTP answers by their class)."""
        result = execute(
            self.schema,
            prepared.document,
            context_value=context,
            variable_values=prepared.variables,
            operation_name=prepared.operation_name,
            hide_suggestions=self.hide_suggestions,
        )
        if not isinstance(result, ExecutionResult):
            result = await result
        return result

    async def subscribe(self, prepared: Prepared, context: Context) -> AsyncIterator[dict[str, Any]] | dict[str, Any]:
        """An async iterator of formatted results, or one formatted result when it failed at once."""
        result = subscribe(
            self.schema,
            prepared.document,
            context_value=context,
            variable_values=prepared.variables,
            operation_name=prepared.operation_name,
            hide_suggestions=self.hide_suggestions,
        )
        if not isinstance(result, (ExecutionResult, AsyncIterator)):
            result = await result
        if isinstance(result, ExecutionResult):
            return self.format(result)
        return self._formatted(result)

    async def _formatted(self, stream: AsyncIterator[ExecutionResult]) -> AsyncIterator[dict[str, Any]]:
        try:
            async for item in stream:
                yield self.format(item)
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    def format(self, result: ExecutionResult) -> dict[str, Any]:
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [self.format_error(e) for e in result.errors]
        return body

    def format_error(self, err: GraphQLError) -> dict[str, Any]:
        formatted = dict(err.formatted)
        original = err.original_error
        if isinstance(original, ToolkitError):
            formatted["message"], formatted["extensions"] = toolkit_error(original)
        elif original is not None and not isinstance(original, GraphQLError):
            request_id = secrets.token_hex(8)
            log.error("internal error %s in %s", request_id, err.path, exc_info=original)
            formatted["message"] = f"internal error (request id {request_id}); it has been logged"
            formatted["extensions"] = {"code": ToolkitError.code, "requestId": request_id}
        elif "extensions" not in formatted or not formatted.get("extensions"):
            formatted["extensions"] = {"code": InvalidRequest.code}  # graphql-core's own (variables that do not coerce)
        return formatted


def toolkit_error(exc: ToolkitError) -> tuple[str, dict[str, Any]]:
    """A toolkit error's GraphQL message and extensions (from the error's own declaration, with a field
    in GraphQL's names)."""
    extensions = exc.extensions()
    message = exc.message
    if isinstance(exc, InvalidRequest):
        name = graphql_field(exc.field)
        extensions["field"] = name
        message = f"{name}: {exc.detail}"
    return message, extensions


def refused(exc: ToolkitError) -> RequestError:
    """A toolkit error raised before execution (a key, the rate limit), as the HTTP answer that refuses it."""
    headers = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="graphql"'
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    message, extensions = toolkit_error(exc)
    return RequestError(exc.status, [{"message": message, "extensions": extensions}], headers, cause=exc)


def check_envelope(query: Any, variables: Any, operation_name: Any) -> None:
    """The request's JSON fields have the right types (and the variables a bounded nesting)."""
    if not isinstance(query, str) or not query.strip():
        raise bad_request("the request needs a 'query' string")
    if variables is not None and not isinstance(variables, dict):
        raise bad_request("'variables' must be a JSON object")
    if variables is not None and json_depth(variables) > MAX_VARIABLES_DEPTH:
        message = f"'variables' are nested more than {MAX_VARIABLES_DEPTH} levels deep"
        raise bad_request(message, limit=MAX_VARIABLES_DEPTH)
    if operation_name is not None and not isinstance(operation_name, str):
        raise bad_request("'operationName' must be a string")


GENERATING = frozenset({"infer", "inferStream"})  # root fields that queue a request on a model's engine


def generating(prepared: Prepared) -> list[str | None]:
    """The models (None: the default) that the operation's root ``infer``/``inferStream`` fields ask for: their
    ``model`` argument, given inline or as a variable (a value that is not a string is left to coercion). An
    operation that reaches its root fields through fragments is not looked into: its request will say."""
    selections = prepared.shape.operation.selection_set.selections
    if not all(isinstance(s, FieldNode) for s in selections):
        return []
    models: list[str | None] = []
    for selection in selections:
        assert isinstance(selection, FieldNode)
        if selection.name.value not in GENERATING:
            continue
        value: Any = None
        for argument in selection.arguments or ():
            if argument.name.value != "model":
                continue
            if isinstance(argument.value, VariableNode):
                value = (prepared.variables or {}).get(argument.value.name.value)
            elif isinstance(argument.value, StringValueNode):
                value = argument.value.value
        models.append(value if isinstance(value, str) else None)
    return models
