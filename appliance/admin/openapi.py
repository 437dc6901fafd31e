"""The OpenAPI 3.1 document of the admin API, generated from the operations' declarations
(router.py, types.py): the same definitions the handlers validate with."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from .. import __version__
from .problem import PROBLEM, problem_schema
from .router import Router

TAG_DOCS = {
    "Users": "People who own nodes. Name rules: see the README's Names section.",
    "Nodes": "Machines in the tailnet: names, tags, owners, expiry, routes.",
    "Auth": "Interactive logins and SSH checks waiting for an admin's decision (Headscale 0.28's auth verbs).",
    "PreAuthKeys": "Keys that register nodes without an interactive login.",
    "ApiKeys": "Bearer keys for this API.",
    "Policy": "The access policy (Tailscale's HuJSON), checked by the real engine.",
    "DNS": "DNS settings clients get; changes are stored and applied at once.",
    "DERP": "Relays clients use when no direct path works.",
    "Server": "The server itself: version, health, TLS certificate, settings.",
    "Audit": "Every change: who, what, before and after, when, from where.",
    "Events": "Live events (server-sent events), webhooks and their deliveries, and samples for charts.",
    "Console": "The built-in web console at /admin.",
}

DESCRIPTION = """trioscale's admin API, in the shapes of Headscale's v1 API (camelCase fields, IDs as
strings, RFC 3339 times) so that Headscale's tools and UIs keep working where the endpoint exists
in Headscale. Authenticate with `Authorization: Bearer <key>` (`trioscale apikeys create`); the
admin unix socket needs no key. Errors are RFC 9457 problem details (application/problem+json):
400 the request cannot be read (not JSON, not UTF-8, too deep), 401 no valid key, 403 not
allowed by the configuration, 404 not found, 409 conflicts with what exists, 422 a value breaks
its rules (`errors` says which), 429 too many failed key attempts from your address."""


def _problem_response(status: int) -> dict[str, Any]:
    return {"description": HTTPStatus(status).phrase,
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def openapi_document(router: Router) -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for op in router.operations:
        params = [{"name": n, "in": "path", "required": True, "schema": s.schema(components)}
                  for n, s in op.params.items()]
        params += [{"name": n, "in": "query", "required": False, "schema": s.schema(components)}
                   for n, s in op.query.items()]
        errors = {400, 401, 422, 429, *op.errors}
        if op.params:
            errors.add(404)
        responses: dict[str, Any] = {
            "200": {"description": "OK", "content": {op.produces: {
                "schema": op.response.spec.schema(components) if op.response else (
                    {"type": "object"} if op.produces == "application/json" else {"type": "string"})}}},
        }
        responses.update({str(s): _problem_response(s) for s in sorted(errors)})
        responses["default"] = {"description": "any other error (405, 500)",
                                "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        spec: dict[str, Any] = {"operationId": op.id, "summary": op.summary, "tags": [op.tag]}
        if op.description:
            spec["description"] = op.description
        if params:
            spec["parameters"] = params
        if op.body is not None:
            spec["requestBody"] = {"required": op.body_required, "content": {
                "application/json": {"schema": op.body.spec.schema(components)}}}
        spec["responses"] = responses
        spec["security"] = [{"bearer": []}]
        paths.setdefault(op.path, {})[op.method.lower()] = spec
    components["Problem"] = problem_schema()
    used = sorted({op.tag for op in router.operations}, key=list(TAG_DOCS).index)
    return {
        "openapi": "3.1.0",
        "info": {"title": "trioscale admin API", "version": __version__, "description": DESCRIPTION},
        "tags": [{"name": t, "description": TAG_DOCS[t]} for t in used],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "an API key (`trioscale apikeys create`)"}},
        },
        "security": [{"bearer": []}],
    }
