"""A small OpenAI-compatible VLM server for tests and benchmarks: aiohttp on 127.0.0.1, in a thread.

It checks every request as vLLM would take it (a chat completion with one user message of ``image_url``
parts, base64 JPEG data URLs, or one ``video_url`` part of comma-separated JPEG frames, then the text),
that it carries ``frames`` images (or a video of that many frames), and the bearer key. It "captions" a
clip by the colour of its first frame (``a plain red screen``), so a caption proves the frames arrived,
and reports ``usage`` as a real server: prompt tokens for the text plus 16 per image (8 per video frame),
unless ``ignore_images`` (a text-only model that drops them). It records every request and how many were
in flight at once, waits ``latency`` seconds per answer, and injects faults per colour: a list of
actions taken by that colour's successive requests (``"429"`` with ``Retry-After``, ``"500"``,
``"400"``, ``"reset"`` (the TCP connection reset), ``"slow"`` (``slow_s`` before answering)).
``down = True`` resets every connection (the server gone); ``die_after=N`` sets it after N answers.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

COLOURS = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "white": (255, 255, 255), "black": (0, 0, 0), "orange": (255, 165, 0), "purple": (128, 0, 128),
           "cyan": (0, 255, 255), "magenta": (255, 0, 255), "navy": (0, 0, 128), "olive": (128, 128, 0),
           "teal": (0, 128, 128), "maroon": (128, 0, 0), "gray": (128, 128, 128), "silver": (192, 192, 192)}
IMAGE_TOKENS, VIDEO_FRAME_TOKENS = 16, 8


def colour_name(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda c: float(np.abs(np.array(COLOURS[c]) - rgb).sum()))


@dataclass
class Record:
    """One request as the server saw it."""

    path: str
    url: str
    auth: str | None
    colour: str | None = None
    images: int = 0
    probe: bool = False
    status: int = 200
    start: float = 0.0
    body: dict = field(default_factory=dict)


class VLMServer:
    """``with VLMServer(...) as s: s.base_url`` -> ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, *, model: str = "tiny-vlm", key: str | None = None, frames: int | None = None,
                 latency: float = 0.0, faults: dict[str, list[str]] | None = None, retry_after: float = 1.0,
                 slow_s: float = 2.0, ignore_images: bool = False, die_after: int | None = None,
                 completion_tokens: int | None = None) -> None:
        self.model, self.key, self.frames, self.latency = model, key, frames, latency
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.retry_after, self.slow_s, self.ignore_images = retry_after, slow_s, ignore_images
        self.die_after, self.completion_tokens = die_after, completion_tokens
        self.down = False
        self.records: list[Record] = []
        self.format_errors: list[str] = []
        self.in_flight = self.max_in_flight = self.answered = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = None
        self.base_url = ""

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> VLMServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the test VLM server did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        from aiohttp import web

        self._loop = loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        loop.run_until_complete(self._runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock)
        loop.run_until_complete(site.start())
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        ready.set()
        loop.run_forever()

    # -- what the tests read -----------------------------------------------------------------
    def clip_requests(self) -> list[Record]:
        """Caption requests (not the preflight's probes), in arrival order."""
        return [r for r in self.records if r.path.endswith("/chat/completions") and not r.probe]

    def reset_counts(self) -> None:
        with self._lock:
            self.records.clear()
            self.max_in_flight = 0

    # -- handlers ----------------------------------------------------------------------------
    def _record(self, request, **kw: Any) -> Record:
        rec = Record(request.path, str(request.url), request.headers.get("Authorization"), start=time.monotonic(),
                     **kw)
        with self._lock:
            self.records.append(rec)
        return rec

    def _refuse_key(self, request):
        from aiohttp import web

        if self.key is not None and request.headers.get("Authorization") != f"Bearer {self.key}":
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            # as some APIs do: the key echoed back in the refusal (the client must not write it anywhere)
            return web.json_response({"error": {"message": f"Incorrect API key provided: {given}", "code": 401}},
                                     status=401)
        return None

    @staticmethod
    def _reset(request):
        """Reset the TCP connection (RST, not a clean close): what a crashed server or a dropped proxy does."""
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

    def _admit(self, request):
        """Record the request; the answer when the server is down (a reset connection) or the key is refused
        (401), else None."""
        from aiohttp import web

        rec = self._record(request)
        if self.down:
            self._reset(request)
            return rec, web.Response(status=503)
        refused = self._refuse_key(request)
        if refused is not None:
            rec.status = 401
            return rec, refused
        return rec, None

    async def _models(self, request):
        from aiohttp import web

        _, answer = self._admit(request)
        if answer is not None:
            return answer
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model",
                                                               "root": f"test/{self.model}"}]})

    def _parse(self, body: dict) -> tuple[list[np.ndarray], int, str]:
        """The frames (decoded), how many visual parts, and the text; a malformed request raises ValueError."""
        from PIL import Image

        if body.get("model") != self.model:
            raise LookupError(f"The model `{body.get('model')}` does not exist.")
        msgs = body.get("messages")
        if not (isinstance(msgs, list) and len(msgs) == 1 and msgs[0].get("role") == "user"):
            raise ValueError("expected one user message")
        content = msgs[0].get("content")
        if not isinstance(content, list) or not content or content[-1].get("type") != "text":
            raise ValueError("content must be a list of parts ending with the text")
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
            raise ValueError("max_tokens must be a positive integer")
        frames, parts = [], 0
        for part in content[:-1]:
            kind = part.get("type")
            if kind not in ("image_url", "video_url") or not isinstance(part.get(kind), dict):
                raise ValueError(f"unexpected part {kind!r}")
            url = part[kind].get("url", "")
            prefix = "data:image/jpeg;base64," if kind == "image_url" else "data:video/jpeg;base64,"
            if not url.startswith(prefix):
                raise ValueError(f"{kind} must be a {prefix} data URL")
            if kind == "video_url" and len(content) != 2:
                raise ValueError("one video part per request")
            for b64 in url[len(prefix):].split(","):
                img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
                if img.format != "JPEG":
                    raise ValueError("not a JPEG")
                frames.append(np.asarray(img.convert("RGB")))
            parts += 1
        return frames, parts, content[-1]["text"]

    async def _chat(self, request):
        from aiohttp import web

        rec, answer = self._admit(request)
        if answer is not None:
            return answer
        body = await request.json()
        rec.body = {k: v for k, v in body.items() if k != "messages"}
        rec.probe = body.get("max_tokens") == 1
        try:
            frames, parts, text = self._parse(body)
        except LookupError as e:
            rec.status = 404
            return web.json_response({"error": {"message": str(e), "code": 404}}, status=404)
        except Exception as e:  # noqa: BLE001 - any malformed request is the client's bug
            self.format_errors.append(str(e))
            rec.status = 400
            return web.json_response({"error": {"message": f"bad request: {e}"}}, status=400)
        rec.images = len(frames)
        video = any(p.get("type") == "video_url" for p in body["messages"][0]["content"])
        if not rec.probe and self.frames is not None and len(frames) != self.frames:
            self.format_errors.append(f"{len(frames)} frames, not {self.frames}")
            rec.status = 400
            return web.json_response({"error": {"message": f"expected {self.frames} frames"}}, status=400)
        rec.colour = colour_name(frames[0].reshape(-1, 3).mean(0)) if frames and not rec.probe else None
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            action = self.faults[rec.colour].pop(0) if self.faults.get(rec.colour) else None
        try:
            if action in ("429", "500", "400", "503"):
                rec.status = int(action)
                reason = {"429": "Rate limit reached", "500": f"model exploded on {rec.colour}",
                          "400": f"prompt too long for {rec.colour}", "503": "overloaded"}[action]
                headers = {"Retry-After": str(self.retry_after)} if action == "429" else {}
                return web.json_response({"error": {"message": reason, "code": rec.status}}, status=rec.status,
                                         headers=headers)
            if action == "reset":
                rec.status = 0
                self._reset(request)
                return web.Response(status=500)
            try:
                await asyncio.sleep(self.slow_s if action == "slow" else self.latency)
            except asyncio.CancelledError:  # the client gave up (its timeout) and closed the connection: aiohttp
                rec.status = 0  # cancels the handler (handler_cancellation), so it leaves the in-flight count at once
                raise
            caption = "x" if rec.probe else f"a plain {rec.colour} screen"
            n_completion = self.completion_tokens or len(caption.split())
            per = VIDEO_FRAME_TOKENS if video else IMAGE_TOKENS
            prompt_tokens = len(text.split()) + 5 + (0 if self.ignore_images else per * len(frames))
            with self._lock:
                if not rec.probe:
                    self.answered += 1
                    if self.die_after is not None and self.answered >= self.die_after:
                        self.down = True
            return web.json_response({
                "id": "chatcmpl-test", "object": "chat.completion", "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": caption},
                             "finish_reason": "length" if rec.probe else "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n_completion,
                          "total_tokens": prompt_tokens + n_completion}})
        finally:
            with self._lock:
                self.in_flight -= 1
