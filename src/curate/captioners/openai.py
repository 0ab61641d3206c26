"""The built-in `openai` captioner: a VLM behind an OpenAI-compatible chat-completions endpoint.

vLLM's ``vllm serve``, SGLang, LMDeploy, TGI and hosted VLM APIs speak the same protocol, batch requests
continuously and keep the model resident across runs. Each clip is one request: its ``frames`` sampled
frames as base64 JPEG data URLs (``input=images``: one ``image_url`` part per frame, the OpenAI
multi-image format) or as one ``video_url`` part (``input=video``: ``data:video/jpeg;base64,<f1>,<f2>,...``,
the frame-list form vLLM accepts for its video models), then the prompt. Up to ``concurrency`` requests
are in flight at once (threads over one pooled httpx client), so a vLLM server's batch stays full.

Failures: 429, 5xx, resets and timeouts are retried with exponential backoff and jitter (tenacity),
``Retry-After`` honoured; a clip that still fails becomes an error row with the server's reason; a
server that stops answering ends the run with a clear error (a rerun finishes the rest). At load a
preflight (``GET /models``, then the prompt alone and the prompt with one visual input) turns a bad
endpoint, a refused key or an unknown model into one error, and measures what the visual input costs
in prompt tokens: a server that drops the frames is refused before any clip is captioned, and every
answer's ``usage.prompt_tokens`` is checked against it, so no caption of nothing is marked ok.

The API key is read from the environment variable ``api_key_env`` names, and only sent in the
``Authorization`` header: it is never an option value, so it reaches no table, ``_meta.json``, card or
Airflow param.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from curate.captioners import Caption, Captioner, CaptionerInfo, fit_longer_side
from curate.encoders.base import parse_bool
from curate.errors import CurateError

log = logging.getLogger(__name__)

DEFAULT_PROMPT = ("Describe this video clip in one or two sentences: the setting, the main subjects and what "
                  "happens. Do not mention that it is a video.")
INPUTS = ("images", "video")
#: statuses worth another try: rate limits, overload, gateway errors (a 4xx other than these is the request's fault)
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class EndpointError(CurateError):
    """The endpoint cannot serve this run: unreachable, the key refused, the model unknown, the frames ignored."""


class ServerError(Exception):
    """A response the server refused: its status, its own reason and the ``Retry-After`` it asked for."""

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status, self.reason, self.retry_after = status, reason, retry_after


class ServerGone(CurateError):
    """The server stopped answering mid-run: the clips left are not captioned (a rerun does them)."""


def _reason(resp) -> str:
    """The server's own words: OpenAI's ``{"error": {"message": ...}}``, FastAPI's ``detail``, or the body."""
    try:
        body = resp.json()
    except ValueError:
        return (resp.text or resp.reason_phrase or "").strip()[:300]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or body)[:300]
        return str(err)[:300]
    return str(body)[:300]


def _retry_after(resp) -> float | None:
    """``Retry-After`` in seconds (the delta form; the HTTP-date form is rare from inference servers)."""
    v = resp.headers.get("retry-after")
    try:
        return max(0.0, float(v)) if v is not None else None
    except ValueError:
        return None


def jpeg_data(frame: np.ndarray, quality: int) -> str:
    """One RGB frame as base64 JPEG (no ``data:`` prefix)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def airflow_connection(conn_id: str, model: str = "") -> tuple[str, str | None, str]:
    """``(base_url, key, model)`` from an Airflow connection: ``host`` the endpoint (a full URL, or a host name
    with ``schema`` http/https and ``port``; ``/v1`` added when it has no path), ``password`` the key, and
    ``model`` from the connection's extra unless given. Read through Airflow's own lookup (in a task: the API
    server; elsewhere: ``AIRFLOW_CONN_<ID>`` variables and the configured secrets backends)."""
    try:
        from airflow.sdk import BaseHook
    except ImportError as e:
        raise CurateError("openai captioner conn_id needs Airflow (pip install 'curate[airflow]'); outside "
                          "Airflow pass base_url and api_key_env") from e
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as e:  # AirflowNotFoundException and the secrets backends' own errors
        raise CurateError(f"openai captioner: Airflow connection {conn_id!r}: {e}") from e
    host = (conn.host or "").rstrip("/")
    if "://" not in host:
        scheme = conn.schema if conn.schema in ("http", "https") else "http"
        host = f"{scheme}://{host}{f':{conn.port}' if conn.port else ''}"
    if not urlsplit(host).path:
        host += "/v1"
    extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else {}
    return host, conn.password or None, model or str(extra.get("model") or "")


class OpenAICaptioner(Captioner):
    """Captions clips through an OpenAI-compatible ``/chat/completions`` endpoint, many requests in flight."""

    name = "openai"
    streams = True

    def __init__(self, device: str | None = None, base_url: str = "", model: str = "", api_key_env: str = "",
                 prompt: str = DEFAULT_PROMPT, frames: int | str = 8, input: str = "images",
                 max_new_tokens: int | str = 128, min_new_tokens: int | str = 0, do_sample: bool | str = False,
                 temperature: float | str = 0.7, top_p: float | str = 0.9, seed: int | str = 0,
                 repetition_penalty: float | str = 1.0, size: int | str = 448, jpeg_quality: int | str = 90,
                 concurrency: int | str = 64, retries: int | str = 6, backoff: float | str = 1.0,
                 max_backoff: float | str = 60.0, timeout: float | str = 300.0, check_frames: bool | str = True,
                 preflight: bool | str = True, extra_body: str | dict = "", conn_id: str = "",
                 **unknown: Any) -> None:
        super().__init__(device)
        if "api_key" in unknown:
            raise CurateError("openai captioner: pass the key in an environment variable and name it with "
                              "-o api_key_env=VAR (a key given as an option would be written to _meta.json, logs "
                              "and Airflow params).")
        if unknown:
            raise CurateError(f"openai captioner: unknown option(s) {', '.join(sorted(unknown))} "
                              "(`curate plugins` lists the options)")
        key_from_conn = None
        if conn_id:
            if base_url:
                raise CurateError("openai captioner: pass base_url or conn_id, not both")
            base_url, key_from_conn, model = airflow_connection(str(conn_id), str(model))
        if not base_url or not model:
            raise CurateError("openai captioner needs -o base_url=http://HOST:PORT/v1 and -o model=NAME (the name "
                              "the server serves: `curl BASE_URL/models`).")
        parts = urlsplit(str(base_url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CurateError(f"openai captioner base_url must be http(s)://HOST[:PORT]/v1, not {base_url!r}")
        if parts.username or parts.password or parts.query:
            raise CurateError("openai captioner base_url must not carry credentials or a query string: the URL is "
                              "recorded with the captions; put the key in an environment variable (api_key_env).")
        if input not in INPUTS:
            raise CurateError(f"openai captioner input must be one of {', '.join(INPUTS)}, not {input!r}")
        self.base_url, self.model, self.input = str(base_url).rstrip("/"), str(model), input
        self.api_key_env, self.prompt = str(api_key_env), str(prompt)
        self.frames, self.max_new_tokens = int(frames), int(max_new_tokens)
        self.min_new_tokens = min(int(min_new_tokens), self.max_new_tokens)
        self.do_sample, self.temperature, self.top_p = parse_bool(do_sample), float(temperature), float(top_p)
        self.seed, self.repetition_penalty = int(seed), float(repetition_penalty)
        self.size, self.jpeg_quality = int(size), int(jpeg_quality)
        self.concurrency, self.retries = int(concurrency), int(retries)
        self.backoff, self.max_backoff, self.timeout = float(backoff), float(max_backoff), float(timeout)
        self.check_frames = parse_bool(check_frames)
        if self.frames < 1 or self.max_new_tokens < 1 or self.concurrency < 1 or self.retries < 0:
            raise CurateError("openai captioner frames, max_new_tokens and concurrency must be at least 1, "
                              "retries at least 0")
        if isinstance(extra_body, str):
            try:
                extra_body = json.loads(extra_body) if extra_body.strip() else {}
            except ValueError as e:
                raise CurateError(f"openai captioner extra_body must be a JSON object: {e}") from e
        if not isinstance(extra_body, dict):
            raise CurateError("openai captioner extra_body must be a JSON object")
        self.extra_body: dict[str, Any] = extra_body
        self.conn_id = str(conn_id)
        self._key = key_from_conn or self._api_key()
        self._client = None
        self._served_root = ""
        self._text_tokens: int | None = None  # prompt tokens of the prompt alone (preflight)
        self._visual_tokens: int | None = None  # what one visual input of the preflight added
        self._gone = threading.Event()  # the server stopped answering: no new requests, no more retries
        self._stop = threading.Event()  # the stream ended: in-flight retries give up
        if parse_bool(preflight):
            self.preflight()

    # -- interface ---------------------------------------------------------------------------
    @property
    def info(self) -> CaptionerInfo:
        gen: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                               "repetition_penalty": self.repetition_penalty}
        if self.min_new_tokens:
            gen["min_new_tokens"] = self.min_new_tokens
        if self.do_sample:
            gen.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        if self.extra_body:
            gen["extra_body"] = self.extra_body
        return CaptionerInfo(self.name, self.model, self._served_root or self.model, self.prompt, self.frames, gen,
                             {"input": self.input, "base_url": self.base_url, "size": self.size,
                              "concurrency": self.concurrency})

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """Longer side at most ``size`` px: the bytes sent, and the server resizes further as its model wants."""
        return fit_longer_side(width, height, self.size)

    def preprocess(self, frames: np.ndarray) -> list[str]:
        """JPEG-encode in the decoder threads, ahead of the requests."""
        return [jpeg_data(f, self.jpeg_quality) for f in frames]

    def caption_batch(self, inputs: Iterable[list[str]]) -> list[Caption]:
        """A batch through the stream: all in flight at once (up to ``concurrency``); a failure raises."""
        out: dict[int, Any] = {}
        for key, res, _ in self.caption_stream(enumerate(inputs)):
            out[key] = res
        for res in out.values():
            if isinstance(res, Exception):
                raise res
        return [out[i] for i in range(len(out))]

    def caption_stream(self, items: Iterable[tuple[Any, list[str]]]) -> Iterator[tuple[Any, Caption | Exception, float]]:
        """``(key, frames)`` in, ``(key, Caption or the clip's error, seconds)`` out as requests complete, with
        at most ``concurrency`` requests in flight. Raises :class:`ServerGone` when the server stops answering:
        the clips it failed then get no row (not an error row), so a plain rerun captions them."""
        import httpx

        self._stop.clear()
        self._gone.clear()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="openai-caption")
        pending: set[Future] = set()

        def finished(done: set[Future]) -> Iterator[tuple[Any, Caption | Exception, float]]:
            for f in done:
                key, res, secs = f.result()
                if self._gone.is_set() and isinstance(res, (ServerGone, httpx.TransportError)):
                    continue  # not this clip's fault: left for the rerun
                yield key, res, secs

        try:
            for key, frames in items:
                if self._gone.is_set():
                    break
                pending.add(pool.submit(self._timed, key, frames))
                if len(pending) >= self.concurrency:  # the bound: wait for a slot
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                else:  # hand on what is done without waiting, so rows (and progress) flow while decoding
                    done = {f for f in pending if f.done()}
                    pending -= done
                yield from finished(done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from finished(done)
        finally:  # normal end, or the consumer stopped (an error, a crash): no retry outlives the stream
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
        if self._gone.is_set():
            raise ServerGone(f"The captioning endpoint {self.base_url} stopped answering (connection refused, "
                             "reset or timed out after every retry, and GET /models fails too). The captions "
                             "finished so far are written; run `curate caption` again once the server is back "
                             "to caption the rest.")

    # -- HTTP --------------------------------------------------------------------------------
    def _api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise CurateError(f"openai captioner: api_key_env={self.api_key_env} but the environment variable "
                              f"{self.api_key_env} is not set (or empty) in this process.")
        return key

    def _scrub(self, text: str) -> str:
        """The server's words without the key (some echo it back in a 401): they go to rows and logs."""
        return text.replace(self._key, "***") if self._key else text

    @property
    def client(self):
        if self._client is None:
            import httpx

            headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
            self._client = httpx.Client(
                base_url=self.base_url + "/", headers=headers,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _retrying(self):
        import httpx
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

        jitter = wait_random_exponential(multiplier=self.backoff, max=self.max_backoff)

        def retryable(e: BaseException) -> bool:
            if isinstance(e, ServerError):
                return e.status in RETRY_STATUS
            return isinstance(e, (httpx.TransportError,))  # refused, reset, timed out, protocol errors

        def wait_for(state) -> float:
            e = state.outcome.exception()
            if isinstance(e, ServerError) and e.retry_after is not None:  # the server said when
                return min(e.retry_after, self.max_backoff) + jitter(state) * 0.1
            return jitter(state)

        # sleep on the stop event: the end of the stream (or a dead server) cuts a long Retry-After short
        return Retrying(stop=stop_after_attempt(self.retries + 1), wait=wait_for, retry=retry_if_exception(retryable),
                        reraise=True, sleep=self._stop.wait)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion, retried; a refusal raises :class:`ServerError` with the server's reason."""
        def once() -> dict[str, Any]:
            if self._gone.is_set() or self._stop.is_set():
                raise ServerGone("the endpoint stopped answering" if self._gone.is_set() else "the run stopped")
            r = self.client.post("chat/completions", json=body)
            if r.status_code != 200:
                raise ServerError(r.status_code, self._scrub(_reason(r)), _retry_after(r))
            try:
                return r.json()
            except ValueError as e:
                raise ServerError(r.status_code, f"not JSON: {r.text[:200]!r}") from e

        return self._retrying()(once)

    def _body(self, frames: list[str], max_tokens: int | None = None) -> dict[str, Any]:
        if not frames:
            visual: list[dict] = []
        elif self.input == "images":
            visual = [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{f}"}} for f in frames]
        else:
            visual = [{"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(frames)}}]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": [*visual, {"type": "text", "text": self.prompt}]}],
            "max_tokens": max_tokens or self.max_new_tokens,
            "temperature": self.temperature if self.do_sample else 0.0,
        }
        if self.do_sample:
            body.update(top_p=self.top_p, seed=self.seed)
        if self.min_new_tokens and max_tokens is None:  # vLLM / SGLang extensions: sent only when asked for
            body["min_tokens"] = self.min_new_tokens
        if self.repetition_penalty != 1.0:
            body["repetition_penalty"] = self.repetition_penalty
        return {**body, **self.extra_body}

    def _timed(self, key: Any, frames: list[str]) -> tuple[Any, Caption | Exception, float]:
        t0 = time.perf_counter()
        try:
            res: Caption | Exception = self._caption(frames)
        except Exception as e:  # this clip's error row; a dead server stops the run
            res = e
            if self._is_down(e):
                self._gone.set()
                self._stop.set()  # the others stop retrying now
        return key, res, time.perf_counter() - t0

    def _is_down(self, e: Exception) -> bool:
        """A transport error after every retry: is the server gone (GET /models fails too) or was it this clip?"""
        import httpx

        if isinstance(e, ServerGone):
            return True
        if not isinstance(e, httpx.TransportError):
            return False
        try:
            self.client.get("models", timeout=10.0)
            return False
        except httpx.TransportError:
            return True

    def _caption(self, frames: list[str]) -> Caption:
        out = self._post(self._body(frames))
        try:
            choice = out["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise ServerError(200, f"no choices[0].message.content in the answer: {json.dumps(out)[:200]}") from e
        usage = out.get("usage") or {}
        self._check_visual(usage.get("prompt_tokens"), len(frames))
        tokens = usage.get("completion_tokens")
        finish = choice.get("finish_reason")
        truncated = None if finish is None else finish == "length"
        return Caption(str(text).strip(), int(tokens) if tokens is not None else None, truncated)

    def _check_visual(self, prompt_tokens: int | None, n_frames: int) -> None:
        """The frames must have cost prompt tokens: at least what the preflight's small 64x64 image (or 2-frame
        video) cost per image (per video), beyond the prompt alone. A server that dropped them answered the prompt
        alone; one that dropped some of them answered less than it was shown."""
        if not self.check_frames or self._text_tokens is None:
            return
        if prompt_tokens is None:
            raise ServerError(200, "the answer has no usage.prompt_tokens, so nothing shows that the frames reached "
                                   "the model (check_frames=false accepts such a server)")
        units = n_frames if self.input == "images" else 1
        need = self._text_tokens + units * (self._visual_tokens or 1)
        if prompt_tokens < need:
            raise ServerError(200, f"the server counted {prompt_tokens} prompt tokens, {self._text_tokens} for the "
                                   f"prompt alone: the {n_frames} frames did not reach the model "
                                   f"(at least {need} expected)")

    # -- preflight ---------------------------------------------------------------------------
    def preflight(self) -> None:
        """One clear error at start instead of an error row per clip: the endpoint answers, takes the key, serves
        ``model``, and counts prompt tokens for a visual input (else it ignores the frames)."""
        import httpx

        try:
            r = self.client.get("models", timeout=min(self.timeout, 30.0))
        except httpx.TransportError as e:
            raise EndpointError(f"Cannot reach the captioning endpoint {self.base_url} ({type(e).__name__}: {e}). "
                                "Is the server up (`vllm serve ...`), and is base_url its /v1 address?") from e
        if r.status_code in (401, 403):
            how = (f"the key of Airflow connection {self.conn_id!r}" if self.conn_id and self._key
                   else f"the key in ${self.api_key_env}" if self._key else "no key (set -o api_key_env=VAR)")
            raise EndpointError(f"The captioning endpoint {self.base_url} refused {how}: HTTP {r.status_code} "
                                f"{self._scrub(_reason(r))}")
        if r.status_code == 200:
            try:
                served = {m["id"]: m for m in r.json().get("data", [])}
            except (ValueError, AttributeError, KeyError, TypeError):
                served = {}
            if served and self.model not in served:
                raise EndpointError(f"The captioning endpoint {self.base_url} does not serve model {self.model!r}; "
                                    f"it serves: {', '.join(sorted(served))}. Pass -o model=NAME.")
            self._served_root = str((served.get(self.model) or {}).get("root") or "")
        elif r.status_code != 404:  # some gateways have no /models: the probe below checks model and key
            raise EndpointError(f"The captioning endpoint {self.base_url}: GET /models answered HTTP {r.status_code} "
                                f"{self._scrub(_reason(r))}")
        if not self.check_frames:
            return
        probe = np.full((2, 64, 64, 3), 128, np.uint8)
        probe[:, :32] = 255  # not a flat image: some processors treat a constant image as padding
        try:
            text_only = self._post(self._body([], max_tokens=1))
            with_visual = self._post(self._body(self.preprocess(probe[: 1 if self.input == "images" else 2]),
                                                max_tokens=1))
        except ServerError as e:
            hint = " (the model name?)" if e.status in (400, 404) else ""
            raise EndpointError(f"The captioning endpoint {self.base_url} refused a test request{hint}: "
                                f"HTTP {e.status} {e.reason}") from e
        except httpx.TransportError as e:
            raise EndpointError(f"The captioning endpoint {self.base_url} failed a test request "
                                f"({type(e).__name__}: {e})") from e
        t0 = (text_only.get("usage") or {}).get("prompt_tokens")
        t1 = (with_visual.get("usage") or {}).get("prompt_tokens")
        if t0 is None or t1 is None:
            raise EndpointError(f"The captioning endpoint {self.base_url} reports no usage.prompt_tokens, so curate "
                                "cannot tell whether the frames reach the model. Pass -o check_frames=false to "
                                "caption anyway (unchecked).")
        if t1 - t0 < 1:
            what = "an image" if self.input == "images" else "a video part"
            alt = " Try -o input=images." if self.input == "video" else ""
            raise EndpointError(f"The captioning endpoint {self.base_url} ignores the frames: {what} added "
                                f"{t1 - t0} prompt tokens ({t0} without, {t1} with) for model {self.model!r}. "
                                f"Serve a vision-language model (and, for vLLM, --limit-mm-per-prompt).{alt}")
        self._text_tokens, self._visual_tokens = int(t0), int(t1 - t0)
