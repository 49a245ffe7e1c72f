"""Any OpenAI-compatible `/v1/completions` server (`vllm serve`, a shared GPU box) as a backend.

A long-lived server avoids an engine start per run (a minute or more) and the in-process
engine's shutdown at exit. Prompts go as token ids (part of the OpenAI API, served by vLLM), so
the server sees exactly the prompt that was fitted to the context.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from resources.llm.backend import Generation, GenerationRequest

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class EndpointError(RuntimeError):
    """The completions endpoint did not answer usefully within the configured retries."""


class EndpointSettings(BaseModel):
    """Where the server is and how hard to push it; nothing here shapes outputs."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(default="http://127.0.0.1:8000/v1", description="base URL, up to and including /v1")
    served_model: str | None = Field(default=None, description="`model` of requests; default: the model directory")
    concurrency: int = Field(default=32, ge=1, description="requests in flight")
    retries: int = Field(default=3, ge=0, description="retries per request after the first attempt")
    backoff_s: float = Field(default=1.0, ge=0, description="first retry delay, doubled each retry")
    timeout_s: float = Field(default=600.0, gt=0, description="per request")
    api_key: str | None = None


class EndpointBackend:
    """Requests run with bounded concurrency. Transient failures (connection refused or reset,
    timeouts, HTTP 408/429/5xx) are retried `retries` times with exponential backoff; other HTTP
    errors fail at once. The first request that gives up cancels the rest and raises
    `EndpointError`.
    """

    def __init__(
        self, settings: EndpointSettings, served_model: str, count_tokens: Callable[[str], int] | None = None
    ) -> None:
        self.settings = settings
        self.served_model = served_model
        self.base_url = settings.url.rstrip("/")
        self._count_tokens = count_tokens

    def check(self) -> None:
        """One cheap request, so a wrong URL fails before any work starts."""
        self._request("GET", "/models")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(requests))) as pool:
            futures = [pool.submit(self._complete, request) for request in requests]
            finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in finished and f.exception() is not None), None)
            if failed is not None:
                for future in pending:
                    future.cancel()
                raise failed.exception()  # type: ignore[misc]
            return [f.result() for f in futures]

    def _complete(self, request: GenerationRequest) -> Generation:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.served_model,
            "prompt": request.token_ids,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": request.seed,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        answer = self._request("POST", "/completions", body)
        try:
            choice = answer["choices"][0]
            text = choice["text"] or ""
            usage = answer.get("usage") or {}
            output_tokens = usage.get("completion_tokens")
            if output_tokens is None:
                output_tokens = self._count_tokens(text) if self._count_tokens else 0
            return Generation(
                text=text,
                finish_reason=choice.get("finish_reason") or "",
                prompt_tokens=int(usage.get("prompt_tokens", len(request.token_ids))),
                output_tokens=int(output_tokens),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EndpointError(f"{self.base_url}/completions: unexpected answer {str(answer)[:300]}") from exc

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.base_url + path
        headers = {"Content-Type": "application/json"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        attempts = self.settings.retries + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.settings.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode(errors="replace")
                if exc.code not in _RETRY_STATUS:
                    raise EndpointError(f"{method} {url}: HTTP {exc.code}: {detail}") from exc
                last = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            except json.JSONDecodeError as exc:
                last = f"not JSON: {exc}"
        raise EndpointError(f"{method} {url}: no usable answer after {attempts} attempts; last error: {last}")

    def close(self) -> None:
        """Nothing to release: connections are per request."""
