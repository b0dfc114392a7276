"""`domainlm serve`: a local Hugging Face causal LM behind an OpenAI-compatible HTTP API.

Endpoints: POST /v1/chat/completions and POST /v1/completions (a raw prompt to continue, for base models'
few-shot prompts); both non-streaming, honouring max_tokens, temperature, top_p, n, seed and stop, and
returning token usage. GET /v1/models, and GET /stats (how requests were batched). With an API key set,
every request needs `Authorization: Bearer <key>`. Errors use OpenAI's `{"error": {...}}` body so clients
report them well. Limits (`server_limits.ServeLimits`) are checked before any generation; a full queue
answers 429 with `Retry-After`, which the openai client honours when it retries. Requests that arrive
together are generated together (`batcher.Batcher`: a few milliseconds' window, one left-padded
`generate` per batch).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
import uuid
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from jinja2.exceptions import TemplateError
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from domainlm.augment.batcher import Batcher, BatchSettings, ClientGone
from domainlm.augment.local_model import PromptTooLong
from domainlm.augment.server_limits import (
    BodySizeLimit,
    GenerationQueue,
    QueueFull,
    ServeLimits,
    error_body,
)
from domainlm.augment.teachers import api_key_from_env

log = logging.getLogger("domainlm.serve")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[ContentPart] | None = ""

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content if part.type == "text")
        return self.content or ""


MAX_STOP = 4  # stop sequences per request, as OpenAI allows
MAX_STOP_CHARS = 256


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise APIError(
                400,
                f"stop: at most {MAX_STOP} sequences of at most {MAX_STOP_CHARS} characters",
                "invalid_request_error",
                "invalid_value",
                "stop",
            )
        return tuple(stops)  # empty strings are dropped where prompts are encoded (local_model)

    def turns(self) -> int:
        """Chat messages, counted against `max_messages`; a raw prompt has none."""
        return 0


class ChatRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)

    def turns(self) -> int:
        return len(self.messages)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise APIError(
                400,
                f"prompt: one prompt per request, got {len(self.prompt)} (concurrent requests are batched)",
                "invalid_request_error",
                "invalid_value",
                "prompt",
            )
        return self.prompt[0]


class APIError(Exception):
    def __init__(
        self, status: int, message: str, kind: str, code: str | None = None, param: str | None = None
    ):
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param


def _check_limits(body: GenerationRequest, limits: ServeLimits) -> int:
    """Refuse a request over a limit (400 naming the parameter); the completion tokens it may use."""
    requested = body.max_completion_tokens or body.max_tokens
    over = [
        ("n", body.n, limits.max_n),
        ("max_tokens", requested or 0, limits.max_tokens),
        ("messages", body.turns(), limits.max_messages),
    ]
    for param, value, limit in over:
        if value > limit:
            what = "messages" if param == "messages" else f"{param} = {value}"
            raise APIError(
                400,
                f"{what}: at most {limit} {'are' if param == 'messages' else 'is'} allowed on this server",
                "invalid_request_error",
                "invalid_value",
                param,
            )
    return requested or limits.default_max_tokens


def requested_none(body: GenerationRequest) -> bool:
    return body.max_completion_tokens is None and body.max_tokens is None


def create_app(
    chat_model,
    model_name: str,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    batching: BatchSettings | None = None,
) -> FastAPI:
    """The app over a loaded `LocalChatModel` (or anything with its `encode` and `generate_encoded`; with
    `generate_batch` too, concurrent requests are batched)."""
    limits = limits or ServeLimits()
    queue = GenerationQueue(limits.max_queue)
    batcher = Batcher(chat_model, batching)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="domainlm serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(BodySizeLimit, limit=limits.max_body_bytes)
    app.state.queue = queue  # its `peak` tells a load test how many generations were ever held at once
    app.state.batcher = batcher  # its `calls` and `sizes` tell how requests were batched

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        headers = {"Retry-After": str(limits.retry_after_s)} if e.status == 429 else None
        return JSONResponse(error_body(e.message, e.kind, e.code, e.param), e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        message = "; ".join(f"{'.'.join(map(str, err['loc'][1:]))}: {err['msg']}" for err in e.errors())
        return await _api_error(request, APIError(400, message or "invalid request", "invalid_request_error"))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):  # unknown routes, wrong methods
        return await _api_error(request, APIError(e.status_code, str(e.detail), "invalid_request_error"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("request failed")
        return JSONResponse(error_body(f"internal error: {type(e).__name__}", "server_error"), 500)

    def authorise(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "invalid or missing API key", "invalid_request_error", "invalid_api_key")

    @app.get("/v1/models", dependencies=[Depends(authorise)])
    def models():
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "domainlm"}],
        }

    @app.get("/stats", dependencies=[Depends(authorise)])
    def stats():
        """How requests were batched (not part of the OpenAI API): generate calls, requests per call."""
        return {
            "generate_calls": batcher.calls,
            "requests_per_call": {str(k): v for k, v in sorted(batcher.sizes.items())},
            "queue_peak": queue.peak,
            "abandoned": batcher.abandoned,  # requests dropped before generation: their clients had gone
        }

    async def generate(body: GenerationRequest, request: Request, encode, param: str):
        """Check, tokenise (`encode(max_tokens, fit_context, stop)`), queue and generate one request."""
        # Checked on the event loop, so a full queue answers at once however many requests wait.
        if body.model != model_name:
            raise APIError(
                404,
                f"The model `{body.model}` does not exist; this server has `{model_name}`",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        if body.stream:
            raise APIError(400, "streaming is not supported", "invalid_request_error", param="stream")
        max_tokens = _check_limits(body, limits)
        stop = body.stops()
        try:
            # Tokenised (off the event loop) before taking a queue place: an over-long prompt is a 400,
            # never a 429 that a client would retry.
            prompt = await run_in_threadpool(encode, max_tokens, requested_none(body), stop)
            with queue:
                return await batcher.generate(
                    prompt,
                    gone=request.is_disconnected,
                    temperature=body.temperature,
                    top_p=body.top_p,
                    n=body.n,
                    seed=body.seed,
                )
        except QueueFull as e:
            raise APIError(
                429, f"the server is busy: {e}; retry later", "requests", "rate_limit_exceeded"
            ) from None
        except PromptTooLong as e:
            raise APIError(400, str(e), "invalid_request_error", "context_length_exceeded", param) from None
        except TemplateError as e:  # e.g. a chat template that wants alternating roles
            raise APIError(
                400, f"the chat template refused the messages: {e}", "invalid_request_error"
            ) from None

    def answer(result, kind: str, choices: list[dict]) -> dict:
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": usage,
        }

    @app.post("/v1/chat/completions", dependencies=[Depends(authorise)])
    async def chat_completions(body: ChatRequest, request: Request):
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            result = await generate(body, request, lambda *a: chat_model.encode(messages, *a), "messages")
        except ClientGone:
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
            for i, (text, reason) in enumerate(zip(result.texts, result.finish_reasons, strict=True))
        ]
        return answer(result, "chat.completion", choices)

    @app.post("/v1/completions", dependencies=[Depends(authorise)])
    async def completions(body: CompletionRequest, request: Request):
        prompt = body.text()
        try:
            result = await generate(body, request, lambda *a: chat_model.encode_text(prompt, *a), "prompt")
        except ClientGone:
            return Response(status_code=499)
        choices = [
            {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
            for i, (text, reason) in enumerate(zip(result.texts, result.finish_reasons, strict=True))
        ]
        return answer(result, "text_completion", choices)

    return app


def serve(
    model_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str | None = None,
    model_name: str | None = None,
    device: str | None = None,
    limits: ServeLimits | None = None,
    batching: BatchSettings | None = None,
) -> None:
    """Load the model and serve it until interrupted."""
    import uvicorn

    from domainlm.augment.local_model import LocalChatModel

    api_key = api_key_from_env(api_key_env)
    chat_model = LocalChatModel(model_path, device=device)
    app = create_app(chat_model, model_name or Path(model_path).resolve().name, api_key, limits, batching)
    uvicorn.run(app, host=host, port=port, log_level="info")
