"""A hostile-input corpus made with ffmpeg and plain bytes, and an HTTP server that misbehaves."""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from pathlib import Path

from curate.samples import make_video


def ff(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, capture_output=True)


def make_corpus(d: Path) -> dict[str, Path]:
    """name -> path; every kind of broken or unusual file a web crawl meets."""
    d.mkdir(parents=True, exist_ok=True)
    good = d / "good.mp4"
    make_video(good, [("testsrc2", 40), ("smptebars", 40)])
    files = {"good": good}
    (d / "zero.mp4").write_bytes(b"")
    files["zero"] = d / "zero.mp4"
    nofast = d / "nofaststart.mp4"
    ff("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=3", "-c:v", "libx264", "-preset", "ultrafast",
       str(nofast))
    data = nofast.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    files["truncated"] = d / "truncated.mp4"
    (d / "random.mp4").write_bytes(bytes(range(256)) * 200)
    files["random"] = d / "random.mp4"
    (d / "text.mp4").write_text("<html>not a video</html>\n" * 20)
    files["text"] = d / "text.mp4"
    ff("-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1", "-f", "image2", "-c:v", "png", str(d / "image.png"))
    (d / "png.mp4").write_bytes((d / "image.png").read_bytes())
    files["png"] = d / "png.mp4"
    ff("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(d / "audio.mp4"))
    files["audio"] = d / "audio.mp4"
    ff("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-frames:v", "1", "-c:v", "libx264", str(d / "oneframe.mp4"))
    files["oneframe"] = d / "oneframe.mp4"
    ff("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=0.2", "-c:v", "libx264", str(d / "short.mp4"))
    files["short"] = d / "short.mp4"
    ff("-f", "lavfi", "-i", "testsrc2=size=4096x2160:rate=25:duration=1.2", "-c:v", "libx264", "-preset", "ultrafast",
       str(d / "4k.mp4"))
    files["4k"] = d / "4k.mp4"
    ff("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=3", "-vf", "setpts='PTS+0.03*sin(N)/TB'",
       "-fps_mode", "vfr", "-c:v", "libx264", str(d / "vfr.mp4"))
    files["vfr"] = d / "vfr.mp4"
    ff("-i", str(good), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(d / "rotated.mp4"))
    files["rotated"] = d / "rotated.mp4"
    weird = d / "-we i'rd \"name\" ; $(x).mp4"
    weird.write_bytes(good.read_bytes())
    files["weird_name"] = weird
    return files


class MisbehavingHandler(http.server.SimpleHTTPRequestHandler):
    """/stall: sends headers and a little body, then stalls; /loop: redirects to itself; /busy: 429."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/stall"):
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
            self.wfile.write(b"\0" * 1000)
            self.wfile.flush()
            time.sleep(30)
            return
        if self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", self.path)
            self.end_headers()
            return
        if self.path.startswith("/busy"):
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.end_headers()
            return
        super().do_GET()

    do_HEAD = do_GET


def serve(directory: Path):
    import functools

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(MisbehavingHandler, directory=str(directory)))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"
