"""Domain errors → OpenAI-shaped (or, under /v1/messages, Anthropic-shaped) HTTP errors, in one place.

Every error body is `{"error": {"message", "type", "param", "code"}}` with the codes of DESIGN.md
(lower case), plus `permission_denied` (403: the key's role is below the route's) and `queue_full` (503: the engine's bounded queue is full). Routes raise domain
errors (from `pipelines`, `serving.engine.base`, `serving.engine.manager`; request validation is
`InvalidRequestError`, engine failures `EngineError`) or `APIError`; `install(app)` registers the handlers that turn them into
responses. Anything unexpected is logged with its traceback here and answered with a generic
`inference_error` body: a traceback never reaches a client.

The error renderer chooses the shape by path: under `/v1/messages` (Anthropic's Messages API) the
body is `{"type": "error", "error": {"type", "message"}}` with Anthropic's error types
(`ANTHROPIC_TYPES`), for the auth dependency's and validation errors too.
"""

from __future__ import annotations

import math
import re
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines.embed.base import EmbedderLoadError
from pipelines.errors import ImpetusError
from pipelines.models.store import ModelNotFoundError, ModelNotReadyError, ModelStoreError
from serving.engine.base import (
    EngineClosedError,
    EngineError,
    InvalidRequestError,
    QueueFullError,
)
from serving.engine.window import ContextLengthError, PromptTooLargeError

log = structlog.get_logger(__name__)

# (status, type) of each code; the code itself is what clients branch on.
CODES: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "invalid_request_error"),
    "context_length_exceeded": (400, "invalid_request_error"),
    "auth_required": (401, "authentication_error"),
    "permission_denied": (403, "permission_error"),
    "model_not_found": (404, "invalid_request_error"),
    "rate_limited": (429, "rate_limit_error"),
    "queue_full": (503, "server_error"),
    "inference_error": (500, "server_error"),
    "embedding_error": (500, "server_error"),
    "rag_index_error": (500, "server_error"),
    "model_not_loaded": (503, "server_error"),
    "shutting_down": (503, "server_error"),
    "insufficient_memory": (507, "server_error"),
}
# Anthropic's error type of each code (anything else is `api_error`).
ANTHROPIC_TYPES: dict[str, str] = {
    "invalid_request": "invalid_request_error",
    "context_length_exceeded": "invalid_request_error",
    "auth_required": "authentication_error",
    "permission_denied": "permission_error",
    "model_not_found": "not_found_error",
    "rate_limited": "rate_limit_error",
    "queue_full": "overloaded_error",
    "model_not_loaded": "overloaded_error",
    "shutting_down": "overloaded_error",
}
ANTHROPIC_PREFIX = "/v1/messages"
GENERIC_MESSAGE = "The server failed to process the request; the error was logged."


class APIError(Exception):
    """An error with its HTTP shape; raise it from a route, or get one from `to_api_error`.

    Not a domain error (those derive from `ImpetusError`): it is what they are mapped to."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        default_status, self.type = CODES[code]
        self.code = code
        self.message = message
        self.param = param
        self.status = status or default_status
        self.headers = headers or {}

    def body(self, path: str = "") -> dict[str, Any]:
        """The error body in the shape of the API that `path` belongs to."""
        if path.startswith(ANTHROPIC_PREFIX):
            kind = ANTHROPIC_TYPES.get(self.code, "api_error")
            if self.status == 404:
                kind = "not_found_error"
            return {"type": "error", "error": {"type": kind, "message": self.message}}
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, path: str = "") -> JSONResponse:
        return JSONResponse(self.body(path), status_code=self.status, headers=self.headers)


class EmbeddingError(ImpetusError):
    """Encoding failed inside the embedder (500 embedding_error)."""


def queue_full(retry_after: float, message: str) -> APIError:
    """503 with Retry-After: the engine's bounded queue is full (backpressure, not a quota, so
    not `rate_limited`, which is 429's)."""
    return APIError(
        "queue_full",
        message,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


def to_api_error(exc: BaseException) -> APIError:
    """The one mapping from domain errors to HTTP; unknown exceptions become a generic 500."""
    from serving.engine.manager import (
        InsufficientMemoryError,
        ModelKindError,
        ModelLoadError,
        ModelNotLoadedError,
    )

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ModelNotFoundError):
        return APIError("model_not_found", str(exc), param="model")
    if isinstance(exc, ModelNotReadyError | ModelNotLoadedError | EngineClosedError):
        param = None if isinstance(exc, EngineClosedError) else "model"
        return APIError("model_not_loaded", str(exc), param=param)
    if isinstance(exc, InsufficientMemoryError):
        return APIError("insufficient_memory", str(exc), param="model")
    if isinstance(exc, ModelKindError):
        return APIError("invalid_request", str(exc), param="model")
    if isinstance(exc, ModelLoadError):
        return APIError("inference_error", str(exc))
    if isinstance(exc, QueueFullError):
        return queue_full(exc.retry_after, str(exc))
    if isinstance(exc, ContextLengthError | PromptTooLargeError):
        return APIError("context_length_exceeded", str(exc), param=exc.param)
    if isinstance(exc, InvalidRequestError):
        return APIError("invalid_request", str(exc), param=exc.param)
    if isinstance(exc, EngineError):
        return APIError("inference_error", str(exc))
    if isinstance(exc, EmbedderLoadError | EmbeddingError):
        return APIError("embedding_error", str(exc))
    if isinstance(exc, ModelStoreError):
        return APIError("invalid_request", str(exc))
    return _rag_error(exc) or APIError("inference_error", GENERIC_MESSAGE)


def _rag_error(exc: BaseException) -> APIError | None:
    """Retrieval and indexing (serving/services/rag.py, pipelines.retrieve, pipelines.vectorstore)."""
    from pipelines.retrieve import RetrievalError
    from pipelines.roots import PathMissing, PathNotAllowed
    from pipelines.uploads import FileNotFound, UploadError
    from pipelines.vectorstore import CollectionNotFound, InvalidCollectionName, VectorStoreError
    from serving.services.indexing import RagIndexError
    from serving.services.rag import RunNotCancellable, RunNotFoundError
    from serving.services.vector_stores import VectorStoreBusy, VectorStoreNotFound

    if isinstance(exc, InvalidCollectionName):
        return APIError("invalid_request", str(exc), param="collection")
    if isinstance(exc, VectorStoreNotFound):
        return APIError("invalid_request", str(exc), param="vector_store_id", status=404)
    if isinstance(exc, VectorStoreBusy):
        return APIError("invalid_request", str(exc), status=409)
    if isinstance(exc, PathNotAllowed):  # one body for every refused path (pipelines/roots.py)
        return APIError("permission_denied", str(exc), param="paths")
    if isinstance(exc, PathMissing):
        return APIError("invalid_request", str(exc), param="paths")
    if isinstance(exc, UploadError):
        return APIError("invalid_request", str(exc), param="file")
    if isinstance(exc, FileNotFound):
        return APIError("invalid_request", str(exc), param="file_id", status=404)
    if isinstance(exc, CollectionNotFound):
        return APIError("invalid_request", str(exc), param="collection", status=404)
    if isinstance(exc, RunNotFoundError):
        return APIError("invalid_request", str(exc), param="run_id", status=404)
    if isinstance(exc, RunNotCancellable):
        return APIError("invalid_request", str(exc), param="run_id", status=409)
    if isinstance(exc, RetrievalError):
        return APIError("invalid_request", str(exc))
    if isinstance(exc, RagIndexError | VectorStoreError):
        return APIError("rag_index_error", str(exc))
    return None


def log_unexpected(exc: BaseException, request: Request | None = None) -> None:
    """Log an unexpected failure with its traceback (server side only)."""
    path = request.url.path if request is not None else None
    log.error("serving.unhandled_error", path=path, exc_info=exc)


class CatchAllMiddleware:
    """Answer an exception no handler took with the generic 500 and log it once, here.

    (Starlette's own catch-all answers too, but re-raises, so the server logs it a second time.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            log.error("serving.unhandled_error", path=scope.get("path"), exc_info=exc)
            if started:  # too late for a status code; the stream's own handler did what it could
                return
            err = APIError("inference_error", GENERIC_MESSAGE)
            await err.response(scope.get("path", ""))(scope, receive, send)


_UNION_TAG = re.compile(r"str|int|float|bool|none|[\w-]+\[.*\]")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "The request body is invalid.", None
    # Of a union's branches, the one that says what is wrong with the value (a failed check)
    # rather than that the value is not another branch's type.
    first = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # Drop pydantic's union-branch names ("str", "list[str]", "function-after[...]") from the
    # location, not the fields that merely start like one ("stream", "stop").
    param = ".".join(p for p in loc if not _UNION_TAG.fullmatch(p))
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    if first.get("type") == "missing":
        return f"Missing required parameter {param!r}.", param or None
    msg = msg.removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return (f"Invalid value for {param!r}: {msg}{more}" if param else msg + more), param or None


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into an OpenAI-shaped error body."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        return to_api_error(exc).response(request.url.path)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        return APIError("invalid_request", message, param=param).response(request.url.path)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's own errors: an unknown route (404) or method (405), a body too large (413).
        assert isinstance(exc, StarletteHTTPException)
        message = (
            f"No route {request.method} {request.url.path}."
            if exc.status_code in (404, 405)
            else str(exc.detail)
        )
        err = APIError("invalid_request", message, status=exc.status_code)
        return err.response(request.url.path)

    async def on_domain(request: Request, exc: Exception) -> JSONResponse:
        err = to_api_error(exc)
        if err.message == GENERIC_MESSAGE:
            log_unexpected(exc, request)
        return err.response(request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log_unexpected(exc, request)
        return APIError("inference_error", GENERIC_MESSAGE).response(request.url.path)

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for domain in (
        ModelStoreError,
        EngineError,
        InvalidRequestError,
        EmbedderLoadError,
        EmbeddingError,
    ):
        app.add_exception_handler(domain, on_domain)
    from serving.engine.manager import ModelManagerError

    app.add_exception_handler(ModelManagerError, on_domain)
    from pipelines.errors import ImpetusError

    app.add_exception_handler(ImpetusError, on_domain)  # retrieval, vector store, index runs
    app.add_exception_handler(Exception, on_unexpected)
