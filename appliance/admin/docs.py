"""The API's docs page: HTML rendered on the server from the OpenAPI document, with no script
and nothing loaded from elsewhere (the appliance may have no Internet)."""

from __future__ import annotations

import json
from html import escape
from typing import Any

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;color:#1b1f24}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ccd;margin-top:2.5rem}
code,pre{font:13px ui-monospace,monospace;background:#f3f4f6;border-radius:4px}
pre{padding:.6rem;overflow-x:auto} code{padding:0 .25rem}
.op{border:1px solid #dde;border-radius:6px;padding:.2rem .9rem .6rem;margin:1rem 0}
.m{display:inline-block;min-width:4.2rem;font-weight:700;font-family:ui-monospace,monospace}
.GET{color:#0a6} .POST{color:#05c} .PUT,.PATCH{color:#a60} .DELETE{color:#c22}
table{border-collapse:collapse;width:100%;margin:.3rem 0} td,th{border-bottom:1px solid #eee;
text-align:left;padding:.2rem .4rem;vertical-align:top} th{font-weight:600}
nav a{margin-right:.8rem} .muted{color:#667}
"""


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map of {_type(schema['additionalProperties'])}"
    out = escape(str(kind))
    if "enum" in schema:
        out += ": " + ", ".join(f"<code>{escape(str(v))}</code>" for v in schema["enum"])
    if schema.get("format"):
        out += f" ({escape(schema['format'])})"
    return out


def _limits(schema: dict[str, Any]) -> str:
    parts = []
    for key, label in (("minLength", "min length"), ("maxLength", "max length"), ("minimum", "min"),
                       ("maximum", "max"), ("maxItems", "max items"), ("pattern", "pattern")):
        if key in schema:
            parts.append(f"{label} <code>{escape(str(schema[key]))}</code>")
    return ", ".join(parts)


def _row(name: str, schema: dict[str, Any], required: bool, where: str = "") -> str:
    desc = escape(schema.get("description", ""))
    limits = _limits(schema)
    return (f"<tr><td><code>{escape(name)}</code>{' <span class=muted>required</span>' if required else ''}"
            f"{(' <span class=muted>' + where + '</span>') if where else ''}</td><td>{_type(schema)}</td>"
            f"<td>{desc}{'<br>' if desc and limits else ''}<span class=muted>{limits}</span></td></tr>")


def _example_curl(method: str, path: str, has_body: bool) -> str:
    body = " \\\n  -H 'Content-Type: application/json' -d '{...}'" if has_body else ""
    return (f"curl -X {method} https://SERVER{path} \\\n  -H \"Authorization: Bearer $TRIOSCALE_API_KEY\""
            f"{body}")


def docs_page(doc: dict[str, Any]) -> str:
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8>"
           f"<meta name=viewport content='width=device-width,initial-scale=1'>"
           f"<title>{escape(doc['info']['title'])}</title><style>{_CSS}</style></head><body>",
           f"<h1>{escape(doc['info']['title'])} <span class=muted>{escape(doc['info']['version'])}</span></h1>",
           f"<p>{escape(doc['info']['description'])}</p>",
           "<p>The same as an OpenAPI 3.1 document: <a href=/api/v1/openapi.json><code>/api/v1/openapi.json</code></a>.</p>",
           "<nav>" + "".join(f'<a href="#tag-{escape(t["name"])}">{escape(t["name"])}</a>' for t in doc["tags"])
           + '<a href="#schemas">Schemas</a></nav>']
    for tag in doc["tags"]:
        out.append(f'<h2 id="tag-{escape(tag["name"])}">{escape(tag["name"])}</h2><p>{escape(tag["description"])}</p>')
        for path, item in doc["paths"].items():
            for method, op in item.items():
                if op["tags"][0] != tag["name"]:
                    continue
                m = method.upper()
                out.append(f'<div class=op id="op-{escape(op["operationId"])}"><h3><span class="m {m}">{m}</span>'
                           f'<code>{escape(path)}</code></h3><p><b>{escape(op["summary"])}</b>'
                           f'{(". " + escape(op["description"])) if op.get("description") else ""}</p>')
                params = op.get("parameters", [])
                if params:
                    out.append("<table><tr><th>parameter</th><th>type</th><th></th></tr>")
                    out += [_row(p["name"], p["schema"], p["required"], p["in"]) for p in params]
                    out.append("</table>")
                body = op.get("requestBody")
                if body:
                    schema = body["content"]["application/json"]["schema"]
                    out.append(f"<p>Body ({'required' if body['required'] else 'optional'}): {_type(schema)}</p>")
                (media, ok), = op["responses"]["200"]["content"].items()
                answer = _type(ok) if media == "application/json" else f"<code>{escape(media)}</code>"
                errors = ", ".join(s for s in op["responses"] if s not in ("200", "default"))
                out.append(f"<p>Answer: {answer}. <span class=muted>Errors: {errors}, problem+json.</span></p>")
                out.append(f"<pre>{escape(_example_curl(m, path, bool(body)))}</pre></div>")
    out.append('<h2 id=schemas>Schemas</h2>')
    for name, schema in doc["components"]["schemas"].items():
        out.append(f'<h3 id="schema-{escape(name)}">{escape(name)}</h3>')
        if schema.get("description"):
            out.append(f"<p>{escape(schema['description'])}</p>")
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        if props:
            out.append("<table><tr><th>field</th><th>type</th><th></th></tr>")
            out += [_row(k, v, k in required) for k, v in props.items()]
            out.append("</table>")
        else:
            out.append(f"<pre>{escape(json.dumps(schema, indent=2))}</pre>")
    out.append("</body></html>")
    return "\n".join(out)
