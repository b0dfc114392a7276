"""Teachers: an OpenAI-compatible endpoint, or a Hugging Face model run in this process. A request is chat
messages, or a prompt string to continue (the completions API, for base models' few-shot prompts).

Failures are sorted into three kinds so the pipeline can act on them: `RetryableError` (429, 5xx, timeouts,
dropped connections, and `MalformedReply`: an HTTP 200 whose body is no usable chat completion; back off and
retry), `RequestFailed` (this request will not
succeed as sent, e.g. a 400: recorded as a reject) and `TeacherError` (the whole run cannot succeed:
unreachable server, unknown model, refused key: stop with a clear message).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Protocol

from domainlm.augment.reply_cache import Reply
from domainlm.errors import DomainLMError, InputError


class TeacherError(DomainLMError):
    """The teacher cannot serve this run at all."""


class RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class MalformedReply(RetryableError):
    """An HTTP 200 that is not a usable chat completion: not JSON, no choices, no content, or an error body.

    `fallback`: the reply to keep if every retry is malformed the same way (an empty answer is a teacher's
    answer, judged `empty`, rather than a failed request)."""

    def __init__(self, message: str, fallback: Reply | None = None):
        super().__init__(f"malformed reply: {message}")
        self.fallback = fallback


class RequestFailed(Exception):
    """One request failed for good: refused as sent (e.g. HTTP 400), or still failing after every retry."""


class Teacher(Protocol):
    name: str  # identifies the teacher in cache keys and manifests (URL or hf:path), never a secret

    async def complete(
        self,
        request: list[dict] | str,
        *,
        model: str,
        temperature: float,
        max_tokens: int,
        seed: int,
        stop: tuple[str, ...] = (),
    ) -> Reply: ...

    async def close(self) -> None: ...


class OpenAITeacher:
    """Any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama, `domainlm serve`) via `openai`.

    The client's own retries are off (max_retries=0): the pipeline retries, so it can count and bound them.
    """

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 120.0):
        from openai import AsyncOpenAI

        self.name = base_url.rstrip("/")
        # Local servers need no key, but the client insists on one.
        self._client = AsyncOpenAI(
            base_url=self.name, api_key=api_key or "none", max_retries=0, timeout=timeout
        )
        self._answered = False

    async def complete(self, request, *, model, temperature, max_tokens, seed, stop=()) -> Reply:
        import openai

        params = dict(model=model, temperature=temperature, max_tokens=max_tokens, seed=seed)
        if stop:
            params["stop"] = list(stop)
        try:
            # The raw body, parsed here: the client turns a non-JSON 200 into a str and a half-formed one into
            # objects with missing parts, which would crash far from the cause.
            if isinstance(request, str):
                raw = await self._client.completions.with_raw_response.create(prompt=request, **params)
            else:
                raw = await self._client.chat.completions.with_raw_response.create(messages=request, **params)
            body = raw.http_response.content
        except openai.APITimeoutError:
            raise RetryableError("request timed out") from None
        except openai.APIConnectionError as e:
            if not self._answered:  # nothing has ever answered: a wrong URL or a server that is down
                raise TeacherError(f"cannot connect to the teacher at {self.name} ({_cause(e)})") from None
            raise RetryableError(f"connection error ({_cause(e)})") from None
        except openai.APIStatusError as e:
            self._answered = True  # reachable, even if unhappy
            raise _status_error(e, self.name, model) from None
        except (openai.APIResponseValidationError, ValueError) as e:
            raise MalformedReply(f"unreadable response ({type(e).__name__})") from None
        self._answered = True
        return parse_completion(body)

    async def close(self) -> None:
        await self._client.close()


def parse_completion(body: bytes) -> Reply:
    """The first choice's text and the usage of a chat-completion (or completion) body; MalformedReply when it
    is none."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # also bad UTF-8 and JSON nested too deep
        raise MalformedReply(f"the body is not JSON: {body[:80]!r}") from None
    if not isinstance(data, dict):
        raise MalformedReply(f"the body is a JSON {type(data).__name__}, not an object")
    if "error" in data:  # a proxy or server reporting an error with status 200
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise MalformedReply(f"an error with HTTP 200: {str(message)[:200]}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedReply("no choices")
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message")
    content = message.get("content") if isinstance(message, dict) else first.get("text")
    if not isinstance(content, str):
        raise MalformedReply("the first choice has no message content or text")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = [usage.get(name) for name in ("prompt_tokens", "completion_tokens")]
    reply = Reply(content, *(t if isinstance(t, int) and t >= 0 else 0 for t in tokens))
    if not content.strip():
        raise MalformedReply("empty content", fallback=reply)
    return reply


def _cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error) or type(error).__name__


def _status_error(e, url: str, model: str) -> Exception:
    status = e.status_code
    body = e.body if isinstance(e.body, dict) else {}
    message = body.get("message") or getattr(e, "message", "") or str(e)
    if status in (401, 403):
        # The server's message is not repeated: some echo part of the key.
        return TeacherError(f"the teacher at {url} refused the API key (HTTP {status}); check --api-key-env")
    if status == 404:
        return TeacherError(
            f"the teacher at {url} answered 404 for model {model!r}: {message} "
            "(check --model, and that the URL ends in /v1)"
        )
    if status in (408, 409, 429) or status >= 500:
        retry_after = e.response.headers.get("retry-after") if e.response is not None else None
        try:
            wait = float(retry_after) if retry_after else None
        except ValueError:
            wait = None
        return RetryableError(f"HTTP {status}", retry_after=wait)
    return RequestFailed(f"HTTP {status}: {message}")


class HFTeacher:
    """A local causal LM (`--teacher hf:PATH`), so augmentation runs with no server and no network. Requests
    in flight together (`--concurrency`) are batched as `domainlm serve` batches them."""

    def __init__(self, path: str, device: str | None = None):
        from domainlm.augment.batcher import Batcher
        from domainlm.augment.local_model import LocalChatModel

        self._model = LocalChatModel(path, device=device)
        self._batcher = Batcher(self._model)  # a daemon thread, idle between runs
        self.name = f"hf:{self._model.name}"

    async def complete(self, request, *, model, temperature, max_tokens, seed, stop=()) -> Reply:
        from domainlm.augment.local_model import PromptTooLong

        encode = self._model.encode_text if isinstance(request, str) else self._model.encode
        try:
            prompt = await asyncio.to_thread(encode, request, max_tokens, stop=stop)
        except PromptTooLong as e:
            raise RequestFailed(str(e)) from None
        result = await self._batcher.generate(prompt, temperature=temperature, seed=seed)
        return Reply(result.texts[0], result.prompt_tokens, result.completion_tokens)

    async def close(self) -> None:
        return None


def make_teacher(spec: str, *, api_key_env: str | None = None, timeout: float = 120.0) -> Teacher:
    """`hf:PATH` for an in-process model, else the base URL of an OpenAI-compatible endpoint.

    The key comes from the variable `api_key_env` (which must then be set), else from OPENAI_API_KEY if set;
    local servers without a key need neither."""
    if spec.startswith("hf:"):
        return HFTeacher(spec[3:])
    if not spec.startswith(("http://", "https://")):
        raise InputError(f"teacher {spec!r} is neither an http(s) URL nor hf:PATH")
    api_key = api_key_from_env(api_key_env) if api_key_env else os.environ.get("OPENAI_API_KEY")
    return OpenAITeacher(spec, api_key, timeout=timeout)


def api_key_from_env(api_key_env: str | None) -> str | None:
    """The key in the variable `api_key_env` names (None when it names none); that variable must be set."""
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise InputError(f"--api-key-env names {api_key_env}, but that environment variable is not set")
    return key
