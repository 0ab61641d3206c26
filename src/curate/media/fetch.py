"""Fetching a source's media: http(s) URLs through yt-dlp's Python API (never its command line, so a URL can never
become an option), local paths and ``file://`` URLs copied in (hard-linked when possible); every failure classified
into an error kind that says whether a later run may fix it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

VIDEO_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}")

#: error kinds a later run may fix; the others are permanent for that input
RETRYABLE_KINDS = {"network", "timeout", "rate_limited", "bot_check", "download_failed"}

ERROR_KINDS = {
    "invalid_url": "the URL/path is malformed, starts with '-', or uses an unsupported scheme",
    "not_allowed": "a local path outside the directories this run may read",
    "not_found": "a local file that does not exist",
    "unavailable": "removed, private, geo-blocked or HTTP 404/410 (permanent)",
    "rate_limited": "HTTP 429 / too many requests (retryable)",
    "bot_check": "the site asked to sign in / confirm you are not a bot (retryable later, maybe with cookies)",
    "network": "connection refused/reset, DNS failure, redirect loop, HTTP 5xx (retryable)",
    "timeout": "the server stalled (retryable)",
    "unsupported": "no extractor / not a media URL",
    "too_large": "over --max-filesize",
    "too_long": "over --max-duration",
    "corrupt": "downloaded but not a decodable video (no video stream, truncated, not media)",
    "download_failed": "other download error (retryable)",
}


class IngestError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind



# ----------------------------------------------------------------------------- fetching
def classify_download_error(message: str) -> str:
    m = message.lower()
    # hosts, ports and URLs carry digits ("port=42977", "host:4290/") that must not read as a status code
    status = re.sub(r"\S*://\S*|port=\d+|:\d+", " ", m)
    if re.search(r"(?<!\d)429(?!\d)", status) or "too many requests" in m or "rate-limit" in m or "rate limit" in m:
        return "rate_limited"
    if "sign in to confirm" in m or "not a bot" in m or "captcha" in m:
        return "bot_check"
    if "larger than max-filesize" in m or "file is larger" in m:
        return "too_large"
    if "unsupported url" in m or "no video formats" in m or "unable to extract" in m:
        return "unsupported"
    if any(s in m for s in ("http error 404", "http error 410", "http error 403", "private video", "video unavailable",
                             "has been removed", "not available", "this video is unavailable", "members-only")):
        return "unavailable"
    if "timed out" in m or "timeout" in m or "read operation timed out" in m:
        return "timeout"
    if any(s in m for s in ("connection refused", "connection reset", "errno", "name or service not known",
                             "temporary failure", "redirect", "http error 5", "remote end closed", "incomplete read",
                             "unable to download webpage", "urlopen error", "connection aborted", "broken pipe")):
        return "network"
    return "download_failed"


def short_error(message: str) -> str:
    message = re.sub(r"\x1b\[[0-9;]*m", "", message).replace("ERROR: ", "").strip()
    return message.splitlines()[0][:500] if message else "unknown error"


class _YtdlpLogger:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, msg: str) -> None:
        if "max-filesize" in msg:  # yt-dlp reports the size limit on its debug channel and returns normally
            self.errors.append(msg)

    info = debug
    warning = debug

    def error(self, msg: str) -> None:
        self.errors.append(msg)


def fetch_url(url: str, dest_stem: Path, *, max_height: int | None, max_filesize: int | None,
              socket_timeout: float, segment: tuple[float | None, float | None] | None = None) -> tuple[Path, Path | None, dict]:
    """Download one URL with yt-dlp into ``dest_stem.<ext>``; returns (media, info_json, info)."""
    import yt_dlp

    if max_height:
        fmt = (f"bv*[height<={max_height}]+ba/b[height<={max_height}]/bv*[height<={max_height}]"
               f"/wv*+ba/w")
    else:
        fmt = "bv*+ba/b"
    logger = _YtdlpLogger()
    opts: dict[str, Any] = {
        "outtmpl": {"default": str(dest_stem) + ".%(ext)s"},
        "format": fmt, "merge_output_format": "mp4",
        "writeinfojson": True, "noplaylist": True, "overwrites": True, "continuedl": False,
        "quiet": True, "no_warnings": True, "noprogress": True, "logger": logger,
        "socket_timeout": socket_timeout, "retries": 2, "fragment_retries": 2, "extractor_retries": 1,
        "file_access_retries": 1, "noresizebuffer": True, "cachedir": False, "color": {"stderr": "never"},
    }
    if max_filesize:
        opts["max_filesize"] = int(max_filesize)
    if segment and (segment[0] is not None or segment[1] is not None):
        from yt_dlp.utils import download_range_func

        start = segment[0] or 0.0
        end = segment[1] if segment[1] is not None else float("inf")
        opts["download_ranges"] = download_range_func(None, [(start, end)])
        opts["force_keyframes_at_cuts"] = True  # re-encode at the cuts: the media starts exactly at start_s
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(url, download=True)
    except yt_dlp.utils.DownloadError as e:
        msg = short_error(str(e))
        raise IngestError(classify_download_error(msg), msg) from None
    except Exception as e:  # extractor bugs, socket errors raised raw
        msg = short_error(f"{type(e).__name__}: {e}")
        raise IngestError(classify_download_error(msg), msg) from None
    if info is None:
        raise IngestError("download_failed", short_error("; ".join(logger.errors) or "yt-dlp returned nothing"))
    downloads = info.get("requested_downloads") or []
    media = Path(downloads[0]["filepath"]) if downloads and downloads[0].get("filepath") else None
    if media is None or not media.exists():
        joined = "; ".join(logger.errors)
        if "max-filesize" in joined or "larger" in joined:
            raise IngestError("too_large", f"file is larger than max_filesize={max_filesize} bytes")
        raise IngestError("download_failed", short_error(joined or "yt-dlp produced no file"))
    info_json = dest_stem.parent / (dest_stem.name + ".info.json")
    return media, (info_json if info_json.exists() else None), info


def local_path(url: str) -> Path:
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise IngestError("invalid_url", f"file:// URL with a host is not supported: {url!r}")
        return Path(unquote(parsed.path))
    return Path(url).expanduser()


def copy_local(src: Path, dest_stem: Path, max_filesize: int | None) -> Path:
    if not src.exists():
        raise IngestError("not_found", f"no such file: {str(src)!r}")
    if not src.is_file():
        raise IngestError("invalid_url", f"not a regular file: {str(src)!r}")
    size = src.stat().st_size
    if max_filesize and size > max_filesize:
        raise IngestError("too_large", f"file is {size} bytes, over max_filesize={max_filesize}")
    suffix = src.suffix.lower() if VIDEO_SUFFIX.fullmatch(src.suffix or "") else ".bin"
    dst = dest_stem.with_name(dest_stem.name + suffix)
    if dst.exists() and os.path.samefile(src, dst):  # linked by a run that crashed before saving its row
        return dst
    tmp = dst.with_name(".tmp-" + dst.name)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    tmp.replace(dst)
    tmp.unlink(missing_ok=True)  # rename() is a no-op when both names are links to one file
    return dst


def check_allowed(path: Path, allow_local: bool, local_dirs: Sequence[str | os.PathLike] | None) -> None:
    if not allow_local:
        raise IngestError("not_allowed", "local paths are not allowed in this run (allow_local=False)")
    if local_dirs:
        real = path.resolve()
        for d in local_dirs:
            base = Path(d).expanduser().resolve()
            if real == base or base in real.parents:
                return
        raise IngestError("not_allowed", f"{str(path)!r} is outside the allowed directories "
                                         f"({', '.join(str(d) for d in local_dirs)})")


