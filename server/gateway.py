"""One place that turns a GraphQL request into a result, for HTTP and WebSocket alike.

It parses (with a token limit), validates (with depth, one-model-call and
optional no-introspection rules), checks the rate limit, executes or
subscribes, and formats errors: a ``ToolkitError`` keeps its code, anything
unexpected becomes INTERNAL with a request id that is logged, never a traceback.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    OperationType,
    execute,
    parse,
    specified_rules,
    subscribe,
    validate,
)
from graphql.validation import NoSchemaIntrospectionCustomRule

from server.config import ServerSettings
from server.resolvers import Context, graphql_field, make_schema
from server.security import ApiKeys, DocumentShape, TokenBucket, is_free, limit_errors, select_operation, shape
from toolkit.errors import InvalidRequest, ToolkitError

log = logging.getLogger("server")
DOCUMENT_CACHE_SIZE = 256


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


class RequestError(Exception):
    """The request was refused before execution; ``status`` is for HTTP, ``errors`` for the body."""

    def __init__(self, status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None) -> None:
        super().__init__(errors[0]["message"] if errors else "bad request")
        self.status = status
        self.errors = errors
        self.headers = headers or {}


def error(message: str, code: str, **extensions: Any) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code, **extensions}}


class Gateway:
    def __init__(self, service: Any, settings: ServerSettings) -> None:
        self.service = service
        self.settings = settings
        self.schema = make_schema()
        self.keys = ApiKeys(settings.api_keys, settings.admin_keys)
        self.limiter = TokenBucket(settings.rate_per_minute, settings.rate_burst)
        rules = list(specified_rules)
        if not settings.introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        self.rules = rules
        self._documents: OrderedDict[str, DocumentNode] = OrderedDict()

    # ----- before execution -----------------------------------------------------

    def _parse_and_validate(self, query: str) -> DocumentNode:
        """Parse (with a token limit) and validate. Valid documents are cached: a client that sends
        the same operation again skips both steps (about 5 ms for the client's stream document)."""
        try:
            document = parse(query, max_tokens=self.settings.max_query_tokens)
        except GraphQLError as exc:
            code = "BAD_USER_INPUT" if "token limit" in exc.message.lower() else "GRAPHQL_PARSE_FAILED"
            raise RequestError(400, [{**exc.formatted, "extensions": {"code": code}}]) from None
        errors = validate(self.schema, document, self.rules)
        if errors:
            formatted = [{**e.formatted, "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}} for e in errors]
            raise RequestError(400, formatted)
        return document

    def authenticate(self, presented: str | None) -> None:
        if not self.keys.check(presented):
            message = "a valid API key is required: send Authorization: Bearer <key>"
            if presented:
                message = "the API key is not valid"
            raise RequestError(401, [error(message, "UNAUTHENTICATED")], {"WWW-Authenticate": 'Bearer realm="graphql"'})

    def prepare(self, query: Any, variables: Any, operation_name: Any) -> Prepared:
        """Parse and validate; raises ``RequestError`` (400) for a document that cannot run."""
        if not isinstance(query, str) or not query.strip():
            raise RequestError(400, [error("the request needs a 'query' string", "BAD_REQUEST")])
        if variables is not None and not isinstance(variables, dict):
            raise RequestError(400, [error("'variables' must be a JSON object", "BAD_REQUEST")])
        if operation_name is not None and not isinstance(operation_name, str):
            raise RequestError(400, [error("'operationName' must be a string", "BAD_REQUEST")])
        document = self._documents.get(query)
        if document is None:
            document = self._parse_and_validate(query)
            self._documents[query] = document
            if len(self._documents) > DOCUMENT_CACHE_SIZE:
                self._documents.popitem(last=False)
        else:
            self._documents.move_to_end(query)
        operation = select_operation(document, operation_name)
        if operation is None:
            message = "operationName names no operation in the document"
            if operation_name is None:
                message = "the document has several operations: say which one with operationName"
            raise RequestError(400, [error(message, "BAD_REQUEST")])
        doc_shape = shape(document, operation)
        limits = limit_errors(doc_shape, self.settings.max_query_depth)
        if limits:
            raise RequestError(400, [dict(e.formatted) for e in limits])
        return Prepared(document, doc_shape, operation_name, variables)

    def check_rate(self, prepared: Prepared, identity: str) -> None:
        if is_free(prepared.shape):
            return
        wait = self.limiter.take(identity)
        if wait is not None:
            seconds = max(1, round(wait + 0.5))
            raise RequestError(
                429,
                [error(f"rate limit exceeded; retry in {seconds} s", "RATE_LIMITED", retryAfter=seconds)],
                {"Retry-After": str(seconds)},
            )

    # ----- execution ------------------------------------------------------------

    async def execute(self, prepared: Prepared, context: Context) -> dict[str, Any]:
        result = execute(
            self.schema,
            prepared.document,
            context_value=context,
            variable_values=prepared.variables,
            operation_name=prepared.operation_name,
        )
        if not isinstance(result, ExecutionResult):
            result = await result
        return self.format(result)

    async def subscribe(self, prepared: Prepared, context: Context) -> AsyncIterator[dict[str, Any]] | dict[str, Any]:
        """An async iterator of formatted results, or one formatted result when it failed at once."""
        result = subscribe(
            self.schema,
            prepared.document,
            context_value=context,
            variable_values=prepared.variables,
            operation_name=prepared.operation_name,
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
            extensions: dict[str, Any] = {"code": original.code}
            formatted["message"] = original.message
            if isinstance(original, InvalidRequest):
                name = graphql_field(original.field)
                extensions["field"] = name
                formatted["message"] = f"{name}: " + original.message.split(": ", 1)[-1]
                for extra in ("count", "limit"):
                    if hasattr(original, extra):
                        extensions[extra] = getattr(original, extra)
            if original.code == "OVERLOADED":
                extensions["retryAfter"] = 1
            formatted["extensions"] = extensions
        elif original is not None and not isinstance(original, GraphQLError):
            request_id = secrets.token_hex(8)
            log.error("internal error %s in %s", request_id, err.path, exc_info=original)
            formatted["message"] = f"internal error (request id {request_id}); it has been logged"
            formatted["extensions"] = {"code": "INTERNAL", "requestId": request_id}
        elif "extensions" not in formatted or not formatted.get("extensions"):
            formatted["extensions"] = {"code": "BAD_USER_INPUT"}
        return formatted
