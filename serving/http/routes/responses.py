"""OpenAI's Responses API on the chat engine: POST /v1/responses and its stateful routes.

A request's input items (and, with `previous_response_id`, the stored conversation before them)
become chat messages (serving/http/openai/responses_schemas.py); tools, tool_choice and
`text.format` go through chat's translation (serving/http/openai/translate.py), so the engine,
its batch, prefix cache and constrained decoding are chat's. A `file_search` tool grounds the
messages first (serving/services/file_search.py).

Every response is a `_Run`: one task that reads the engine's deltas, builds the output items and
records OpenAI's semantic events (each with its `sequence_number`). A stream follows the events,
a plain request waits for the end, a `background` one returns at once and is read later
(`GET /v1/responses/{id}`) or cancelled (`POST /v1/responses/{id}/cancel`, which also cancels a
streaming one). With `store` (the default), the finished response and its input items are saved
(serving/services/response_store.py) under the id of the key that created it; other keys below
admin get a 404.

Prefix cache: a follow-up's messages are the previous turn's messages, its answer as the
assistant message (the exact generated text) and the new input, so the previous prompt and
answer tokens are a prefix of the new prompt and the engine reuses their KV state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from serving.engine.base import GenerationRequest, InvalidRequestError
from serving.engine.window import PromptTooLargeError, context_window_of
from serving.http import generation, reasoning
from serving.http.auth import principal
from serving.http.deps import ServingContext, get_ctx
from serving.http.errors import GENERIC_MESSAGE, APIError, log_unexpected, to_api_error
from serving.http.openai import translate
from serving.http.openai.responses_schemas import (
    ResponseRequest,
    history,
    input_items,
    new_id,
    to_messages,
)
from serving.services import file_search, tools
from serving.services.response_store import ResponseStore, StoredResponse

log = structlog.get_logger(__name__)
router = APIRouter()

TERMINAL = ("completed", "incomplete", "failed", "cancelled")


class ContextLengthExceeded(APIError):
    """400 `context_length_exceeded`: the input does not fit the model's window."""

    def __init__(self, tokens: int, window: int, model: str) -> None:
        super().__init__(
            "invalid_request",
            f"The input is {tokens} tokens but model {model!r} has a context window of {window} "
            'tokens; shorten the input, or set truncation to "auto" to drop the oldest items.',
            param="input",
        )
        self.code = "context_length_exceeded"


def _not_found(response_id: str) -> APIError:
    return APIError(
        "invalid_request",
        f"No response with id {response_id!r} (it was not stored, was deleted, or belongs to "
        "another key).",
        param="response_id",
        status=404,
    )


# -- runs and the store ----------------------------------------------------------------------------


@dataclass
class _Run:
    """One response being generated: its live object and the events recorded so far."""

    response: dict[str, Any]
    items: list[dict[str, Any]]
    owner: str | None
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False
    task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return str(self.response["id"])

    def emit(self, kind: str, **fields: Any) -> None:
        self.events.append({"type": kind, "sequence_number": len(self.events), **fields})
        self.changed.set()
        self.changed = asyncio.Event()

    def snapshot(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.response))  # a copy that later deltas do not change

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        i = 0
        while True:
            while i < len(self.events):
                yield self.events[i]
                i += 1
            if self.done:
                return
            await self.changed.wait()


class Responses:
    """The store and the runs in flight of one app (built on first use)."""

    def __init__(self, path: Path) -> None:
        self.store = ResponseStore(path)
        self.live: dict[str, _Run] = {}

    def save(self, run: _Run) -> None:
        if run.response.get("store"):
            self.store.put(
                StoredResponse(
                    run.id, run.owner, run.response["created_at"], run.snapshot(), run.items
                )
            )

    def find(self, request: Request, response_id: str) -> tuple[_Run | None, StoredResponse]:
        """The response (and its run while in flight) if the caller may see it, else 404."""
        run = self.live.get(response_id)
        if run is not None and run.response.get("store"):
            record = StoredResponse(
                run.id, run.owner, run.response["created_at"], run.snapshot(), run.items
            )
        else:
            run = None
            found = self.store.get(response_id)
            if found is None:
                raise _not_found(response_id)
            record = found
        p = principal(request)
        key = p.key if p is not None else None
        if key is not None and key.role != "admin" and key.id != record.owner:
            raise _not_found(response_id)
        return run, record


def _responses(request: Request) -> Responses:
    state = request.app.state
    found: Responses | None = getattr(state, "responses", None)
    if found is None:
        ctx: ServingContext = state.ctx
        found = state.responses = Responses(ctx.settings.data_dir / "responses.sqlite3")
    return found


def _owner(request: Request) -> str | None:
    p = principal(request)
    return p.key.id if p is not None and p.key is not None else None


# -- preparing a request ---------------------------------------------------------------------------


def _context_window(ctx: ServingContext, model: str) -> int | None:
    """The model's window (serving/engine/window.py: what GET /v1/models says)."""
    return context_window_of(ctx.manager.entry(model).path)


def _drop_oldest(messages: list[dict[str, Any]]) -> bool:
    """Drop the oldest message that is not a system one (and tool results left without their
    call); False when only the last message is left to drop."""
    for i, m in enumerate(messages[:-1]):
        if m["role"] != "system":
            del messages[i]
            while i < len(messages) - 1 and messages[i]["role"] == "tool":
                del messages[i]
            return True
    return False


async def _fit(
    ctx: ServingContext,
    model: str,
    messages: list[dict[str, Any]],
    plan: translate.ChatPlan,
    truncation: str | None,
) -> tuple[list[dict[str, Any]], int]:
    """The messages that fit the model's window (truncation "auto" drops the oldest), and their
    prompt tokens; 400 context_length_exceeded when they do not fit."""
    window = _context_window(ctx, model)
    messages = list(messages)
    async with ctx.manager.use(model) as engine:
        capabilities = engine.capabilities()
        while True:
            rendered, template_tools = translate.render_tools(
                messages, plan.tool_plan, capabilities, model
            )
            req = GenerationRequest("count", messages=rendered, tools=template_tools)
            try:
                tokens = int(await anyio.to_thread.run_sync(engine.count_tokens, req))
            except PromptTooLargeError:  # refused by its length alone, before tokenizing
                if truncation != "auto" or not _drop_oldest(messages):
                    raise
                continue
            if window is None or tokens < window:
                return messages, tokens
            if truncation != "auto" or not _drop_oldest(messages):
                raise ContextLengthExceeded(tokens, window, model)


@dataclass
class _Prepared:
    items: list[dict[str, Any]]  # every input item (the previous conversation's, then these)
    messages: list[dict[str, Any]]
    plan: translate.ChatPlan
    tokens: int
    found: file_search.FileSearchResult | None
    think: reasoning.ReasoningFormat | None = None  # the model's reasoning tags, if it thinks


async def _prepare(body: ResponseRequest, request: Request, ctx: ServingContext) -> _Prepared:
    items: list[dict[str, Any]] = []
    if body.previous_response_id:
        _, prev = _responses(request).find(request, body.previous_response_id)
        if prev.response.get("status") not in TERMINAL:
            raise InvalidRequestError(
                f"Response {prev.id!r} is still {prev.response.get('status')}; continue from it "
                "once it has ended (or cancel it).",
                param="previous_response_id",
            )
        items = history(prev.items, prev.response.get("output") or [])
    items += input_items(body.input)
    messages = to_messages(items, body.instructions)
    if not any(m["role"] != "system" for m in messages):
        raise InvalidRequestError("input must hold at least one message.", param="input")
    plan = translate.chat_plan(body.chat_extra())
    ctx.manager.entry(body.model)  # 404 for a model outside the registry
    found = None
    tool = body.file_search()
    if tool is not None:
        if ctx.rag is None:
            raise InvalidRequestError("This server has no RAG service.", param="tools")
        found = await file_search.search(ctx.rag, body.model, messages, tool, new_id("fs"))
        messages = found.messages
    messages, tokens = await _fit(ctx, body.model, messages, plan, body.truncation)
    think = reasoning.format_for(ctx.settings.reasoning, body.model)
    return _Prepared(items, messages, plan, tokens, found, think)


def _response_object(
    body: ResponseRequest, response_id: str, status: str, background: bool
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": background,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": body.model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": bool(body.store),
        "temperature": body.temperature,
        "text": {"format": body.text_format()},
        "tool_choice": body.tool_choice or "auto",
        "tools": body.tools or [],
        "top_p": body.top_p,
        "truncation": body.truncation or "disabled",
        "usage": None,
        "user": body.user,
        "metadata": body.metadata or {},
    }


# -- the run: deltas → output items and events -----------------------------------------------------


class _Output:
    """Builds a run's output items from the text the engine generates, emitting the events."""

    def __init__(
        self, run: _Run, plan: translate.ChatPlan, think: reasoning.ReasoningFormat | None
    ) -> None:
        self.run = run
        self.output: list[dict[str, Any]] = run.response["output"]
        self.calls = tools.stream_for(plan.tool_plan)
        # a thinking model's reasoning (serving/http/reasoning.py) becomes a `reasoning` item
        self.splitter = reasoning.ReasoningSplitter(think) if think else None
        self.thought: dict[str, Any] | None = None
        self.message: dict[str, Any] | None = None
        self.call: dict[str, Any] | None = None
        self.text = ""

    def add_item(self, item: dict[str, Any]) -> int:
        self.output.append(item)
        self.run.emit("response.output_item.added", output_index=len(self.output) - 1, item=item)
        return len(self.output) - 1

    def done_item(self, item: dict[str, Any]) -> None:
        self.run.emit("response.output_item.done", output_index=self.output.index(item), item=item)

    def feed(self, text: str, final: bool) -> None:
        if self.splitter is None:
            self._answer(text, final)
            return
        pieces = self.splitter.feed(text) + (self.splitter.finish() if final else [])
        for kind, piece in pieces:
            if kind == "reasoning":
                self._reasoning(piece)
            else:
                self._end_reasoning()
                self._answer(piece, False)
        if final:
            self._end_reasoning()
            self._answer("", True)

    def _reasoning(self, text: str) -> None:
        if self.thought is None:
            self.thought = {
                "id": new_id("rs"),
                "type": "reasoning",
                "status": "in_progress",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": ""}],
            }
            self.add_item(self.thought)
        self.thought["content"][0]["text"] += text
        self.run.emit(
            "response.reasoning_text.delta",
            item_id=self.thought["id"],
            output_index=self.output.index(self.thought),
            content_index=0,
            delta=text,
        )

    def _end_reasoning(self) -> None:
        thought, self.thought = self.thought, None
        if thought is None:
            return
        thought["status"] = "completed"
        self.run.emit(
            "response.reasoning_text.done",
            item_id=thought["id"],
            output_index=self.output.index(thought),
            content_index=0,
            text=thought["content"][0]["text"],
        )
        self.done_item(thought)

    def _answer(self, text: str, final: bool) -> None:
        parts: list[dict[str, Any]]
        if self.calls is None:
            parts = [{"content": text}] if text else []
        else:
            parts = self.calls.feed(text) + (self.calls.finish() if final else [])
        for part in parts:
            if part.get("content"):
                self._content(part["content"])
            for call in part.get("tool_calls") or []:
                self._tool_call(call)

    def _content(self, text: str) -> None:
        self._end_call()
        if self.message is None:
            self.message = {
                "id": new_id("msg"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            index = self.add_item(self.message)
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            self.message["content"].append(part)
            self.run.emit(
                "response.content_part.added",
                item_id=self.message["id"],
                output_index=index,
                content_index=0,
                part=dict(part),
            )
        self.text += text
        self.message["content"][0]["text"] = self.text
        self.run.emit(
            "response.output_text.delta",
            item_id=self.message["id"],
            output_index=self.output.index(self.message),
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _tool_call(self, delta: dict[str, Any]) -> None:
        fn = delta.get("function") or {}
        if delta.get("id"):  # a new call
            self._end_message("completed")
            self._end_call()
            self.call = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": delta["id"],
                "name": fn.get("name", ""),
                "arguments": "",
            }
            self.add_item(self.call)
        args = fn.get("arguments") or ""
        if args and self.call is not None:
            self.call["arguments"] += args
            self.run.emit(
                "response.function_call_arguments.delta",
                item_id=self.call["id"],
                output_index=self.output.index(self.call),
                delta=args,
            )

    def _end_call(self) -> None:
        call, self.call = self.call, None
        if call is None:
            return
        call["status"] = "completed"
        self.run.emit(
            "response.function_call_arguments.done",
            item_id=call["id"],
            output_index=self.output.index(call),
            name=call["name"],
            arguments=call["arguments"],
        )
        self.done_item(call)

    def _end_message(self, status: str, found: file_search.FileSearchResult | None = None) -> None:
        message, self.message = self.message, None
        if message is None:
            return
        index = self.output.index(message)
        part = message["content"][0]
        if found is not None:
            for i, note in enumerate(found.annotations(part["text"])):
                part["annotations"].append(note)
                self.run.emit(
                    "response.output_text.annotation.added",
                    item_id=message["id"],
                    output_index=index,
                    content_index=0,
                    annotation_index=i,
                    annotation=note,
                )
        ids = {"item_id": message["id"], "output_index": index, "content_index": 0}
        self.run.emit("response.output_text.done", **ids, text=part["text"], logprobs=[])
        self.run.emit("response.content_part.done", **ids, part=part)
        message["status"] = status
        self.done_item(message)

    def finish(self, status: str, found: file_search.FileSearchResult | None) -> None:
        if self.calls is not None or self.splitter is not None:
            self.feed("", final=True)
        self._end_call()
        if not self.output or self.output[-1].get("type") in ("file_search_call", "reasoning"):
            self._content("")  # an empty answer is still a message
        self._end_message(status, found)


async def _produce(
    responses: Responses,
    run: _Run,
    gen: generation.Generation,
    prepared: _Prepared,
    include: list[str],
) -> None:
    """The run's task: the engine's deltas → output items, events, the stored response."""
    resp = run.response
    out = _Output(run, prepared.plan, prepared.think)
    try:
        resp["status"] = "in_progress"
        run.emit("response.in_progress", response=run.snapshot())
        found = prepared.found
        if found is not None:
            item = found.call_item("file_search_call.results" in include, status="in_progress")
            index = out.add_item(item)
            for stage in ("in_progress", "searching", "completed"):
                run.emit(
                    f"response.file_search_call.{stage}", output_index=index, item_id=item["id"]
                )
            item.update(found.call_item("file_search_call.results" in include))
            out.done_item(item)
        finish = None
        async for _, delta in gen.deltas():
            if delta.text or delta.finish_reason is not None:
                out.feed(delta.text, final=False)
            finish = delta.finish_reason or finish
        status = "incomplete" if finish == "length" else "completed"
        out.finish(status, found)
        usage = gen.usage()
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        resp["usage"] = {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens,
        }
        resp["status"] = status
        if status == "incomplete":
            resp["incomplete_details"] = {"reason": "max_output_tokens"}
        run.emit(f"response.{status}", response=run.snapshot())
    except asyncio.CancelledError:
        resp["status"] = "cancelled"
        raise
    except Exception as exc:
        err = to_api_error(exc)
        if err.message == GENERIC_MESSAGE:
            log_unexpected(exc)
        resp["status"] = "failed"
        resp["error"] = {"code": err.code, "message": err.message}
        run.emit("error", code=err.code, message=err.message, param=err.param)
        run.emit("response.failed", response=run.snapshot())
    finally:
        await gen.aclose()
        try:
            responses.save(run)
        except Exception as exc:  # the answer still reaches its client
            log.error("responses.save_failed", response_id=run.id, error=str(exc))
        run.done = True
        run.changed.set()
        responses.live.pop(run.id, None)


# -- routes ----------------------------------------------------------------------------------------


def _sse(
    events: AsyncIterator[dict[str, Any]], keepalive: float, on_end: Callable[[], None]
) -> EventSourceResponse:
    async def ended() -> None:  # async: BackgroundTask would run a plain function in a thread
        on_end()

    async def body() -> AsyncIterator[bytes]:
        async for ev in events:
            data = json.dumps(ev, separators=(",", ":"))
            yield f"event: {ev['type']}\ndata: {data}\n\n".encode()

    return EventSourceResponse(
        body(),
        ping=keepalive,
        ping_message_factory=lambda: ServerSentEvent(comment="keep-alive", sep="\n"),
        sep="\n",
        # Also when the stream never started (the client left before the first byte).
        background=BackgroundTask(ended),
    )


async def _wait_or_disconnect(request: Request, run: _Run) -> bool:
    """Wait for the run to end; False (the run cancelled) when the client leaves first."""
    assert run.task is not None

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({run.task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not run.task.done():
            run.task.cancel()
            await asyncio.gather(run.task, return_exceptions=True)
            return False
        return True
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


@router.post("/v1/responses", response_model=None)
async def create_response(
    body: ResponseRequest, request: Request, ctx: ServingContext = Depends(get_ctx)
) -> Response:
    responses = _responses(request)
    if body.background and not body.store:
        raise InvalidRequestError("background responses need store: true.", param="background")
    response_id = new_id("resp")
    prepared = await _prepare(body, request, ctx)
    defaults = ctx.manager.entry(body.model).defaults
    messages, plan = prepared.messages, prepared.plan

    def requests(engine: Any) -> list[GenerationRequest]:
        return translate.chat_requests(
            response_id,
            messages,
            plan,
            lambda: body.sampling(defaults),
            n=1,
            seed=body.seed,
            capabilities=engine.capabilities(),
            model=engine.model_name,
        )

    # Primed like a chat stream: errors before the first token (queue full) are plain HTTP errors.
    gen, _ = await generation.start(ctx, body.model, requests, stream=True)
    background = bool(body.background)
    run = _Run(
        _response_object(body, response_id, "queued" if background else "in_progress", background),
        items=prepared.items,
        owner=_owner(request),
    )
    run.emit("response.created", response=run.snapshot())
    responses.live[response_id] = run
    if background:
        responses.save(run)
    run.task = asyncio.create_task(
        _produce(responses, run, gen, prepared, list(body.include or []))
    )
    if body.stream:

        def left() -> None:
            if not background and run.task is not None and not run.task.done():
                run.task.cancel()  # the client left: a plain stream ends with it

        async def events() -> AsyncIterator[dict[str, Any]]:
            try:
                async for ev in run.follow():
                    yield ev
            finally:
                left()

        return _sse(events(), ctx.settings.serve.keepalive_s, left)
    if background:
        return JSONResponse(run.snapshot())
    if not await _wait_or_disconnect(request, run):
        return Response(status_code=499)
    return JSONResponse(run.snapshot())


@router.post("/v1/responses/input_tokens")
async def count_input_tokens(
    body: ResponseRequest, request: Request, ctx: ServingContext = Depends(get_ctx)
) -> dict[str, Any]:
    """The prompt tokens `POST /v1/responses` would use for this body (template and tools)."""
    prepared = await _prepare(body, request, ctx)
    return {"object": "response.input_tokens", "input_tokens": prepared.tokens}


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, request: Request) -> dict[str, Any]:
    _, record = _responses(request).find(request, response_id)
    return record.response


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    responses = _responses(request)
    run, _ = responses.find(request, response_id)
    if run is not None and run.task is not None and not run.task.done():
        run.task.cancel()
        await asyncio.gather(run.task, return_exceptions=True)
    responses.store.delete(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request) -> dict[str, Any]:
    """Cancel a background (or streaming) response in flight; its partial output is kept."""
    run, record = _responses(request).find(request, response_id)
    if run is not None and run.task is not None and not run.task.done():
        run.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(run.task, return_exceptions=True)
        return run.snapshot()
    if record.response.get("status") == "cancelled":
        return record.response
    raise InvalidRequestError(
        f"Response {response_id!r} has ended ({record.response.get('status')}); only one in "
        "flight can be cancelled.",
        param="response_id",
    )


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    order: str = Query("desc", pattern="^(asc|desc)$"),
    after: str | None = None,
) -> dict[str, Any]:
    _, record = _responses(request).find(request, response_id)
    items = list(record.items) if order == "asc" else list(reversed(record.items))
    if after is not None:
        ids = [i.get("id") for i in items]
        if after not in ids:
            raise InvalidRequestError(f"No input item {after!r} in this response.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(items) > limit,
    }
