"""`domainlm serve`: a local Hugging Face causal LM behind an OpenAI-compatible HTTP API.

Endpoints: POST /v1/chat/completions (non-streaming; honours max_tokens, temperature, top_p, n, seed and
returns token usage) and GET /v1/models. With an API key set, every request needs
`Authorization: Bearer <key>`. Errors use OpenAI's `{"error": {...}}` body so clients report them well.
"""

from __future__ import annotations

import secrets
import time
import uuid
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from domainlm.augment.local_model import PromptTooLong
from domainlm.augment.teachers import api_key_from_env

DEFAULT_MAX_TOKENS = 256


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[dict] = ""

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    seed: int | None = None
    stream: bool = False


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str, code: str | None = None):
        self.status, self.message, self.kind, self.code = status, message, kind, code


def create_app(chat_model, model_name: str, api_key: str | None = None) -> FastAPI:
    """The app over a loaded `LocalChatModel` (or anything with the same `generate`)."""
    app = FastAPI(title="domainlm serve", docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(
            {"error": {"message": e.message, "type": e.kind, "code": e.code}}, status_code=e.status
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        message = "; ".join(f"{'.'.join(map(str, err['loc'][1:]))}: {err['msg']}" for err in e.errors())
        return await _api_error(request, APIError(400, message, "invalid_request_error"))

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

    @app.post("/v1/chat/completions", dependencies=[Depends(authorise)])
    def chat_completions(body: ChatRequest):  # sync: FastAPI runs it in a worker thread
        if body.model != model_name:
            raise APIError(
                404,
                f"The model `{body.model}` does not exist; this server has `{model_name}`",
                "invalid_request_error",
                "model_not_found",
            )
        if body.stream:
            raise APIError(400, "streaming is not supported", "invalid_request_error")
        try:
            result = chat_model.generate(
                [{"role": m.role, "content": m.text()} for m in body.messages],
                max_tokens=body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
                temperature=body.temperature,
                top_p=body.top_p,
                n=body.n,
                seed=body.seed,
            )
        except PromptTooLong as e:
            raise APIError(400, str(e), "invalid_request_error", "context_length_exceeded") from None
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
            for i, (text, reason) in enumerate(zip(result.texts, result.finish_reasons, strict=True))
        ]
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": usage,
        }

    return app


def serve(
    model_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str | None = None,
    model_name: str | None = None,
    device: str | None = None,
) -> None:
    """Load the model and serve it until interrupted."""
    import uvicorn

    from domainlm.augment.local_model import LocalChatModel

    api_key = api_key_from_env(api_key_env)
    chat_model = LocalChatModel(model_path, device=device)
    app = create_app(chat_model, model_name or Path(model_path).resolve().name, api_key)
    uvicorn.run(app, host=host, port=port, log_level="info")
