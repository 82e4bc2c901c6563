"""The OpenAPI document as the app really answers: FastAPI's, with its error responses corrected.

FastAPI documents a 422 `HTTPValidationError` on every route that takes input, but Impetus
answers bad input with 400 and its own error body (serving/http/errors.py), and any route can
answer 401/403/429 (auth), 404, 413 or a 5xx. So each operation's 422 is dropped and "4XX" and
"5XX" responses with `ErrorResponse` are added where the route has not declared them itself (an
API surface with another error shape, such as Anthropic's, declares its own "4XX" and "5XX").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from serving.http.errors import ANTHROPIC_PREFIX
from serving.http.schemas import AnthropicErrorResponse, ErrorResponse

_UNUSED = ("HTTPValidationError", "ValidationError")


def install(app: FastAPI) -> None:
    """Make `app.openapi()` return the corrected document (built once, then cached by FastAPI)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    bodies = {}
    for model in (ErrorResponse, AnthropicErrorResponse):
        name = model.__name__
        components[name] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for sub_name, sub in components[name].pop("$defs", {}).items():
            components.setdefault(sub_name, sub)
        bodies[name] = {
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}
        }
    for path, operations in schema.get("paths", {}).items():
        # Anthropic's routes answer errors in Anthropic's shape (serving/http/errors.py)
        anthropic = path.startswith(ANTHROPIC_PREFIX)
        error = bodies["AnthropicErrorResponse" if anthropic else "ErrorResponse"]
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, text in (("4XX", "Client error"), ("5XX", "Server error")):
                if status not in responses:
                    responses[status] = {"description": text, **error}
    for name in _UNUSED:
        components.pop(name, None)
    return schema
