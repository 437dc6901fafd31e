"""The admin API's operations and how a request reaches one.

An operation is declared once, with its typed inputs and output::

    @r.post("/api/v1/node/{nodeId}/rename/{newName}", "renameNode", "Rename a node", tag="Nodes",
            params={"nodeId": ID(), "newName": NODE_NAME}, response=NodeResponse, changes=True)
    async def rename_node(call: Call, node_id: int, new_name: str) -> NodeResponse: ...

The router reads the request into those types (every path segment percent-decoded as UTF-8,
the query, the JSON body with limits), refuses what does not fit with a problem+json answer,
calls the handler with keyword arguments (snake_case of the declared names; ``body`` for the
body), and writes its answer. The same declarations produce the OpenAPI document (openapi.py).

Every operation that ``changes`` something runs inside an audit OperationScope (audit/actors.py),
so each change the model records inside it is that operation's, by its Actor; after it succeeded
it is reported to ``Router.on_change`` listeners with who asked and what (``touched``: how many
changes the model recorded for it).

A handler may return a ``Streamed`` answer (server-sent events, an export as JSON lines); the
operation declares its media type with ``produces`` for the OpenAPI document.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import unquote_to_bytes

import h11

from ..audit.actors import Actor, OperationScope, operation
from ..http.server import Answer, Streamed
from . import permissions
from .problem import Malformed, MethodNotAllowed, UnknownPath, answer_for
from .schema import FieldError, Spec

log = logging.getLogger(__name__)

MAX_SEGMENT = 1024  # bytes of one decoded path segment
MAX_QUERY_FIELDS = 32


@dataclass(frozen=True)
class Call:
    actor: Actor
    operation: "Operation"
    headers: tuple[tuple[bytes, bytes], ...] = ()  # the request's (lower-case names)

    def header(self, name: bytes) -> str | None:
        return next((v.decode("latin-1") for k, v in self.headers if k == name), None)


@dataclass(frozen=True)
class Change:
    """A change an operation made, reported after it succeeded."""

    actor: Actor
    operation: str  # operationId, e.g. "renameNode"
    target: dict[str, Any]  # the path parameters, typed
    request: dict[str, Any] | None  # the body as JSON, fields declared secret masked
    result: Any  # the response as JSON
    touched: int = 0  # changes the model recorded inside the operation


@dataclass
class Operation:
    method: str
    path: str
    id: str
    summary: str
    tag: str
    handler: Callable[..., Awaitable[Any]]
    params: dict[str, Spec] = field(default_factory=dict)
    query: dict[str, Spec] = field(default_factory=dict)
    body: type | None = None
    body_required: bool = True
    response: type | None = None
    errors: tuple[int, ...] = ()
    changes: bool = False
    description: str = ""
    produces: str = "application/json"  # the 200 answer's media type (a handler's Streamed answer)
    segments: tuple[str, ...] = ()

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        out = {}
        for want, got in zip(self.segments, parts):
            if want.startswith("{"):
                if not got:
                    return None
                out[want[1:-1]] = got
            elif want != got:
                return None
        return out

    @property
    def static_segments(self) -> int:
        return sum(not s.startswith("{") for s in self.segments)


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


class Router:
    def __init__(self) -> None:
        self.operations: list[Operation] = []
        self.on_change: list[Callable[[Change], None]] = []

    def route(self, method: str, path: str, op_id: str, summary: str, **kw: Any) -> Callable:
        def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            if any(o.id == op_id for o in self.operations):
                raise ValueError(f"operation {op_id} declared twice")
            self.operations.append(Operation(
                method=method, path=path, id=op_id, summary=summary, handler=fn,
                segments=tuple(path.strip("/").split("/")), **kw,
            ))
            return fn

        return register

    def get(self, path: str, op_id: str, summary: str, **kw: Any) -> Callable:
        return self.route("GET", path, op_id, summary, **kw)

    def post(self, path: str, op_id: str, summary: str, **kw: Any) -> Callable:
        return self.route("POST", path, op_id, summary, **kw)

    def put(self, path: str, op_id: str, summary: str, **kw: Any) -> Callable:
        return self.route("PUT", path, op_id, summary, **kw)

    def patch(self, path: str, op_id: str, summary: str, **kw: Any) -> Callable:
        return self.route("PATCH", path, op_id, summary, **kw)

    def delete(self, path: str, op_id: str, summary: str, **kw: Any) -> Callable:
        return self.route("DELETE", path, op_id, summary, **kw)

    # --- serving ------------------------------------------------------------------------

    def find(self, method: str, raw_path: str) -> tuple[Operation, dict[str, str]]:
        """The operation for ``method`` and the raw (still %-encoded) path, with its raw path
        parameters. Raises UnknownPath or MethodNotAllowed."""
        parts = raw_path.strip("/").split("/") if raw_path.strip("/") else [""]
        if raw_path.endswith("//"):
            raise UnknownPath(f"no API at {raw_path[:200]}")
        found = [(o, m) for o in self.operations if (m := o.match(parts)) is not None]
        same = [(o, m) for o, m in found if o.method == method]
        if same:
            return max(same, key=lambda om: om[0].static_segments)
        if found:
            allow = ", ".join(sorted({o.method for o, _ in found}))
            raise MethodNotAllowed(f"{method} is not allowed here; use {allow}", headers=(("allow", allow),))
        raise UnknownPath(f"no API at {raw_path[:200]}")

    async def serve(self, req: h11.Request, body: bytes, actor: Actor,
                    authenticate: Callable[[h11.Request], Awaitable[Actor]] | None = None) -> Answer:
        """Answer one request. ``authenticate`` (the public listener's) returns the Actor for
        the request's credentials or raises; the admin socket passes None (its file mode is
        the guard)."""
        target = req.target.decode("latin-1")
        raw_path, _, raw_query = target.partition("?")
        try:
            op, raw_params = self.find(req.method.decode("latin-1"), raw_path)
            if authenticate is not None:
                actor = await authenticate(req)
            permissions.check(actor.kind, actor.role, op.id, op.tag, op.changes)
            kwargs = self.read(op, raw_params, raw_query, body)
            if op.changes:
                scope = self._scope(actor, op, kwargs)
                with operation(scope):
                    result = await op.handler(Call(actor, op, tuple(req.headers)), **kwargs)
            else:
                result = await op.handler(Call(actor, op, tuple(req.headers)), **kwargs)
            if isinstance(result, Streamed):
                return result
            out = op.response.spec.dump(result) if op.response is not None else {}
        except Exception as e:  # noqa: BLE001 - every fault becomes one problem answer
            return answer_for(e, raw_path[:200])
        if op.changes:
            self._report(scope, out)
        return 200, [("content-type", "application/json")], json.dumps(out).encode()

    async def read_now(self, op_id: str, actor: Actor, query: str = "", **kwargs: Any) -> Any:
        """Call a reading operation in-process (the console's pages render from these), with
        the same permission check as over HTTP; returns the answer as JSON. ``query``: a raw
        query string read as the HTTP edge reads it (FieldError when it breaks the operation's
        definitions). Changes go through serve() only, so each is checked, reported and
        recorded in one place."""
        op = self.by_id(op_id)
        if op.changes:
            raise ValueError(f"{op_id} changes something: call it through serve()")
        permissions.check(actor.kind, actor.role, op.id, op.tag, op.changes)
        if query:
            kwargs.update(self.read(op, {}, query, b""))
        result = await op.handler(Call(actor, op), **kwargs)
        return op.response.spec.dump(result) if op.response is not None else {}

    def by_id(self, op_id: str) -> Operation:
        for o in self.operations:
            if o.id == op_id:
                return o
        raise KeyError(op_id)

    @staticmethod
    def _scope(actor: Actor, op: Operation, kwargs: dict[str, Any]) -> OperationScope:
        target = {k: v for k, v in kwargs.items() if k in {snake(p) for p in op.params}}
        try:
            body = op.body.spec.dump(kwargs["body"]) if op.body is not None and "body" in kwargs else None
            if body is not None:
                for _, key, _, f in op.body.spec.fields:
                    if f.metadata.get("secret") and body.get(key) is not None:
                        body[key] = "***"
        except Exception:  # noqa: BLE001 - a description's fault must not stop the operation
            log.exception("could not describe the request of %s", op.id)
            body = None
        return OperationScope(actor, op.id, target, body)

    def _report(self, scope: OperationScope, out: Any) -> None:
        change = Change(scope.actor, scope.operation, scope.target, scope.request, out, scope.touched)
        for listener in self.on_change:
            try:
                listener(change)
            except Exception:  # noqa: BLE001
                log.exception("change listener failed for %s", change.operation)

    def read(self, op: Operation, raw_params: dict[str, str], raw_query: str, body: bytes) -> dict[str, Any]:
        """The handler's keyword arguments; raises Malformed (cannot be read) or FieldError."""
        kwargs: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        for name, spec in op.params.items():
            text = _segment(raw_params[name], name)
            try:
                kwargs[snake(name)] = spec.parse_text(text, f"path.{name}")
            except FieldError as e:
                problems += e.problems
        query = _query(raw_query)
        for name in query.keys() - op.query.keys():
            problems.append((f"query.{name[:60]}", "unknown parameter"))
        for name, spec in op.query.items():
            if name in query:
                try:
                    kwargs[snake(name)] = spec.parse_text(query[name], f"query.{name}")
                except FieldError as e:
                    problems += e.problems
        if op.body is not None:
            doc = _json(body) if body.strip() else ({} if not op.body_required else None)
            if doc is None:
                problems.append(("body", "a JSON object is required"))
            else:
                try:
                    kwargs["body"] = op.body.spec.parse(doc, "body")
                except FieldError as e:
                    problems += e.problems
        if problems:
            raise FieldError(problems)
        return kwargs


def _segment(raw: str, name: str) -> str:
    try:
        data = unquote_to_bytes(raw.encode("latin-1"))
        text = data.decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise Malformed(f"path parameter {name}: not valid UTF-8 after %-decoding") from None
    if len(data) > MAX_SEGMENT:
        raise Malformed(f"path parameter {name}: longer than {MAX_SEGMENT} bytes")
    return text


def _query(raw: str) -> dict[str, str]:
    """Query parameters, the last of repeated ones winning (as grpc-gateway did for scalars);
    names and values %-decoded as UTF-8, strictly."""
    out: dict[str, str] = {}
    if not raw:
        return out
    fields = [f for f in raw.split("&") if f]
    if len(fields) > MAX_QUERY_FIELDS:
        raise Malformed(f"the query string has more than {MAX_QUERY_FIELDS} parameters")
    for f in fields:
        name, _, value = f.partition("=")
        try:
            name, value = (unquote_to_bytes(p.replace("+", " ").encode("latin-1")).decode("utf-8")
                           for p in (name, value))
        except (UnicodeDecodeError, UnicodeEncodeError):
            raise Malformed("the query string is not valid UTF-8 after %-decoding") from None
        out[name] = value
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Malformed(f"the body is not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise Malformed("the body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers of thousands of digits
        raise Malformed(f"the body is not JSON: {str(e)[:200]}") from None
