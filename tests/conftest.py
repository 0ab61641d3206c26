"""Shared fixtures: ffmpeg-made videos with cuts at known frames, a tiny open_clip checkpoint, a local HTTP server,
an S3 API server (moto) on loopback."""

from __future__ import annotations

import functools
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from curate.samples import SHOTS, make_video


def curate(*args, check=True, **kw) -> subprocess.CompletedProcess:
    """Run the `curate` command as a user would (a subprocess, wide plain output); raise on failure."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    p = subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=600, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"curate {' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p

FPS = 25
#: video name -> shots (lavfi source, frames); cuts fall exactly between shots
VIDEOS = {
    "three_shots": [("testsrc2", 50), ("mandelbrot", 40), ("smptebars", 60)],
    "two_shots": [("gradient", 60), ("rgbtestsrc", 45)],
    "long_shot": [("mandelbrot", 130)],
}
CAPTIONS = {"three_shots": "test pattern then fractal then color bars", "two_shots": "a color gradient then stripes",
            "long_shot": None}

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def curate_parallel(commands: list[list]) -> list[dict]:
    """Run curate commands at once (as N shells, Slurm array tasks or GPU workers would); their --json summaries."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "curate.cli", *map(str, c), "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for c in commands]
    outs = [p.communicate(timeout=600) for p in procs]
    for c, p, (o, e) in zip(commands, procs, outs):
        assert p.returncode == 0, f"curate {' '.join(map(str, c))} -> {p.returncode}\n{o}\n{e}"
    return [json.loads(o) for o, _ in outs]


class FirstFrameSampler:
    """A sampler (frames.py protocol) that asks for each clip's first frame at 32x24: cheap decode checks."""

    def frame_indices(self, n, fps):
        return [0]

    def decode_size(self, w, h):
        return (32, 24)

    def preprocess(self, frames):
        return frames.shape


def cuts(shots):
    out, start = [], 0
    for _, n in shots:
        out.append((start, start + n))
        start += n
    return out


def frames_md5(args) -> str:
    """MD5 of the raw RGB frames ffmpeg draws from ``args`` (inputs, filters, ``-map``), before any encoder."""
    p = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *map(str, args), "-c:v", "rawvideo", "-pix_fmt", "rgb24",
                        "-f", "md5", "-"], capture_output=True, text=True, check=True, timeout=300)
    return p.stdout.strip()


def assert_draws_the_same(args, what: str) -> None:
    """Fail unless ffmpeg draws the same frames from ``args`` twice: a fixture video must be the same video on every
    run and machine (lavfi's ``gradients``, ``life``, ``cellauto`` draw random colours or cells on each run, even with
    a seed, and a test over them tests another video every time)."""
    first, second = frames_md5(args), frames_md5(args)
    if first != second:
        pytest.fail(f"{what}: ffmpeg drew different frames in two runs ({first} != {second}); use a deterministic "
                    "lavfi source (testsrc2, smptebars, mandelbrot, color, a geq expression)")


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    for name in sorted({s for shots in VIDEOS.values() for s, _ in shots}):
        n = max(k for shots in VIDEOS.values() for s, k in shots if s == name)
        assert_draws_the_same(["-f", "lavfi", "-i", SHOTS[name].format(w=320, h=240, fps=FPS), "-frames:v", n],
                              f"lavfi source {name!r}")
    out = {}
    for name, shots in VIDEOS.items():
        out[name] = d / f"{name}.mp4"
        make_video(out[name], shots, fps=FPS, audio=(name == "three_shots"))
    return out


@pytest.fixture(scope="session")
def source_list(tmp_path_factory, videos) -> Path:
    import csv

    p = tmp_path_factory.mktemp("lists") / "sources.csv"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["url", "caption", "license"])
        w.writeheader()
        for name, path in videos.items():
            w.writerow({"url": str(path), "caption": CAPTIONS[name] or "", "license": "cc-by"})
    return p


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> dict[str, str]:
    """A tiny open_clip architecture (JSON config) and random weights saved as an open_clip state dict."""
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("tinyclip")
    cfg = d / "curate-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("curate-tiny-clip", pretrained=None)
    ckpt = d / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)
    return {"model_config": str(cfg), "weights": str(ckpt)}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """A static server with HTTP Range support (what real hosts and CDNs give ffmpeg/yt-dlp to seek)."""

    def log_message(self, *args):  # keep test output clean
        pass

    def send_head(self):
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not rng.startswith("bytes=") or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        a, _, b = rng[len("bytes="):].partition("-")
        start = int(a) if a else max(0, size - int(b))
        end = min(int(b), size - 1) if a and b else size - 1
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        n = getattr(self, "_remaining", None)
        if n is None:
            return super().copyfile(source, outputfile)
        while n > 0:
            chunk = source.read(min(65536, n))
            if not chunk:
                break
            outputfile.write(chunk)
            n -= len(chunk)


@pytest.fixture(scope="session")
def http_server(tmp_path_factory, videos):
    """Serves a directory with copies of the test videos on 127.0.0.1 (an ephemeral port)."""
    import shutil

    d = tmp_path_factory.mktemp("www")
    for p in videos.values():
        shutil.copy(p, d / p.name)
    (d / "notavideo.mp4").write_text("this is text, not a video")
    handler = functools.partial(_QuietHandler, directory=str(d))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def colour_root(d: Path, colours: list[str]) -> Path:
    """A root under ``d`` with one 1.2 s solid-colour clip per colour (ffmpeg ``color``), each with a source
    caption ("uploaded video number I"): ingested and split, what the caption tests run on."""
    import pandas as pd

    rows = []
    for i, c in enumerate(colours):
        video = d / f"{c}.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c={c}:size=64x48:rate=10",
                        "-frames:v", "12", "-pix_fmt", "yuv420p", "-c:v", "libx264", str(video)], check=True)
        rows.append({"url": str(video), "caption": f"uploaded video number {i}"})
    pd.DataFrame(rows).to_csv(d / "list.csv", index=False)
    root = d / "root"
    curate("ingest", d / "list.csv", "--root", root)
    curate("split", "--root", root, "--detector", "none", "--min-clip-s", "0.5")
    return root


def read_table(path, **kwargs):
    """A table of a dataset root as a DataFrame, the way users read it: Lance (``lance.dataset(p).to_table()``)
    for tables, pandas for the plain Parquet files of a subset (selection, annotations)."""
    import pandas as pd

    p = Path(path)
    if (p / "_versions").is_dir():
        import lance

        t = lance.dataset(str(p)).to_table(columns=kwargs.get("columns"))
        return t.to_pandas()
    return pd.read_parquet(p, **kwargs)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every table's rows (as sorted records) and every published file, to compare a rerun against."""

    out = {}
    for table in ["sources", "clips", "scores", *[f"embeddings/{p.name}" for p in (root / "embeddings").glob("*")]]:
        if (root / table).exists():
            df = read_table(root / table)
            key = "source_id" if table == "sources" else "clip_id"
            df = df.drop(columns=[c for c in ("updated_at",) if c in df.columns]).sort_values(key)
            out[table] = df.to_json(orient="records").encode()
    for p in sorted((root / "subsets").rglob("*")) if (root / "subsets").exists() else []:
        if p.is_file() and p.name != "README.md":
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


# ----------------------------------------------------------------------------- an S3 API server
MOTO = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
BUCKET = "curate-test"
#: the variables that point the real clients (Lance, s3fs, boto3) at the server: what every worker needs
S3_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 API server (moto's standalone server) on loopback with one bucket, ``s3://curate-test``; the
    ``AWS_*`` variables of :data:`S3_ENV_KEYS` point every client at it (the secret key is random: tests
    can check that it is never logged)."""
    pytest.importorskip("s3fs")
    if not Path(MOTO).exists():
        pytest.skip("moto_server (pip install 'moto[server]') is not installed")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": f"curate-secret-{secrets.token_hex(8)}",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches clients: one made for an earlier server would stay
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
