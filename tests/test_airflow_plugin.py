"""The Airflow UI plugin: loaded by Airflow's plugin manager, pages served through FastAPI's TestClient."""

from __future__ import annotations

import importlib.util
import re
import struct

import airflow_helpers as h  # first: it configures Airflow before anything imports it
import pytest


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from curate.airflow.plugin import app

    h.pipeline_run()  # a root with a published subset
    return TestClient(app)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_airflow_loads_the_plugin():
    from airflow import plugins_manager

    h.migrate()
    plugins, _errors = plugins_manager._get_plugins()
    curate = [p for p in plugins if p.name == "curate"]
    assert len(curate) == 1
    apps, _ = plugins_manager.get_fastapi_plugins()
    assert [a["url_prefix"] for a in apps if a["name"] == "curate"] == ["/curate"]
    views, _ = plugins_manager._get_ui_plugins()
    view = next(v for v in views if v["name"] == "Curation")
    assert view["href"] == "/curate/" and view["destination"] == "nav" and view["url_route"] == "curation"


def test_plugins_folder_file_reexports_the_plugin():
    from curate.airflow.plugin import CuratePlugin

    spec = importlib.util.spec_from_file_location("curate_plugin_file", h.REPO / "plugins" / "curate_plugin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.CuratePlugin is CuratePlugin


def test_index_lists_roots_counts_and_subsets(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    body = r.text
    for name in ("main", "inbox", "other"):
        assert f"<h2>{name}</h2>" in body
    assert "<td>ingest</td><td>2</td><td>3</td>" in body  # 2 ok, 3 error rows
    assert "<td>embed:clip</td><td>4</td>" in body
    assert "href='/roots/0/subsets/e2e'" in body


def test_subset_page_has_card_thresholds_and_histograms(client):
    r = client.get("/roots/0/subsets/e2e")
    assert r.status_code == 200
    body = r.text
    assert "<h1>e2e</h1>" in body and "<h2>Counts</h2>" in body  # the README.md card, rendered
    assert "&gt;= 0.5" in body  # the min_duration threshold
    imgs = re.findall(r"<img src='([^']+)'", body)
    assert "/roots/0/subsets/e2e/hist/clip_sim.png" in imgs and "/roots/0/subsets/e2e/hist/duration_s.png" in imgs
    for src in imgs:
        img = client.get(src)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert png_size(img.content) == (512, 320)
    assert client.get("/roots/main/subsets/e2e").text == body  # a root by name works too


def test_histogram_marks_the_thresholds(client):
    from curate.airflow.plugin import histogram_png

    root = h.pipeline_run()["root"]
    plain = histogram_png(root, "duration_s", [])
    marked = client.get("/roots/0/subsets/e2e/hist/duration_s.png").content
    again = histogram_png(root, "duration_s", [{"name": "min_duration", "column": "duration_s", "op": ">=",
                                                "value": 0.5}])
    assert marked != plain and png_size(marked) == png_size(plain)
    assert marked == again


def test_card_markdown_cannot_inject_html(client):
    evil = h.ROOTS / "other" / "subsets" / "evil"
    evil.mkdir(parents=True, exist_ok=True)
    (evil / "README.md").write_text("# evil\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n"
                                    "[click](javascript:alert(3)) and <b>bold</b>\n")
    r = client.get("/roots/other/subsets/evil")
    assert r.status_code == 200
    assert "<script>alert" not in r.text and "<img src=x" not in r.text and 'href="javascript:' not in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text and "&lt;b&gt;bold&lt;/b&gt;" in r.text


@pytest.mark.parametrize("url", [
    "/roots/0/subsets/..%2F..%2F..%2Fetc",
    "/roots/0/subsets/../../../etc/passwd",
    "/roots/..%2F..%2Fetc/subsets/passwd",
    "/roots/%2Fetc/subsets/passwd",
    "/roots/9/subsets/e2e",
    "/roots/-1/subsets/e2e",
    "/roots/0/subsets/.locks",
    "/roots/0/subsets/e2e/hist/..%2F..%2F..%2F..%2Fetc%2Fpasswd.png",
    "/roots/0/subsets/e2e/hist/clip_id.png",
    "/roots/0/subsets/e2e/hist/clip_sim_error.png",
    "/roots/0/subsets/nope/hist/clip_sim.png",
])
def test_paths_outside_the_configured_roots_are_refused(client, url):
    r = client.get(url)
    assert r.status_code == 404
    assert "root:" not in r.text  # nothing of /etc/passwd


def test_roots_from_an_airflow_variable(client, monkeypatch):
    from airflow.models import Variable

    h.migrate()
    monkeypatch.delenv("CURATE_ROOTS")
    assert "No dataset roots configured" in client.get("/").text
    Variable.set("curate_roots", str(h.ROOTS / "main"))
    try:
        body = client.get("/").text
        assert "<h2>main</h2>" in body and "<h2>other</h2>" not in body
        assert client.get("/roots/0/subsets/e2e").status_code == 200
        assert client.get("/roots/1/subsets/evil").status_code == 404
    finally:
        Variable.delete("curate_roots")


def test_search_the_published_clips(client):
    import pyarrow.parquet as pq

    published = set(pq.read_table(h.pipeline_run()["root"] / "subsets" / "e2e" / "annotations.parquet")
                    .column("clip_id").to_pylist())
    page = client.get("/roots/0/subsets/e2e").text
    assert "action='/roots/0/subsets/e2e/search'" in page and "<option>clip</option>" in page
    r = client.get("/roots/0/subsets/e2e/search", params={"q": "a colorful test pattern", "k": 3})
    assert r.status_code == 200
    hits = re.findall(r"<td><code>([^<]+)</code></td>", r.text)
    assert len(hits) == 3 and set(hits) <= published
    r = client.get("/roots/0/subsets/e2e/search", params={"q": "<script>alert(1)</script>", "k": 2})
    assert r.status_code == 200 and "<script>alert" not in r.text and "&lt;script&gt;" in r.text
    for bad in ({"q": "x", "k": "many"}, {"q": "", "k": 3}, {"q": "x" * 2000}):
        r = client.get("/roots/0/subsets/e2e/search", params=bad)
        assert r.status_code == 400 and "<strong>" in r.text
    assert client.get("/roots/0/subsets/e2e/search", params={"q": "x", "encoder": "../x"}).status_code == 404
