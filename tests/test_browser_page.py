"""The in-browser page (ferjax export-web, /local/ of ferjax serve): its static folder, the headers
and refusals of /local/, and the page itself in a real headless Chromium whose fake camera plays a
real video: labelled faces on distinct frames with no analysis on the server. Skips, saying why,
without Chromium, onnxruntime-web (`npm ci` in ferjax/browser) or the onnx extra."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import MEDIA
from ferjax import command, export_web
from ferjax.atomic import file_sha256
from ferjax.data.records import EMOTIONS
from ferjax.pretrained import DEFAULT

pytest.importorskip("fastapi", reason="the `serve` extra is not installed (pip install 'ferjax[serve]')")
pytest.importorskip("websockets", reason="the `serve` extra is not installed")

REPO = Path(__file__).resolve().parents[1]
ONE_FACE = MEDIA / "one_face_pexels_640x360.mp4"
KEY = "browser-page-test-key"
_spec = importlib.util.spec_from_file_location("page_fps", REPO / "tools" / "page_fps.py")
page_fps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(page_fps)


def _need_page() -> None:
    """Skips unless onnxruntime-web is installed and the classifier can be exported (or is cached)."""
    try:
        export_web.static_files()
        export_web.check_model()
    except export_web.PageUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def server():
    """`ferjax serve`'s app with an API key, behind a request log (one per module: no other test
    here may analyse, so the Chromium test can assert the server never did)."""
    srv, log, app = page_fps.start_server(api_key=KEY)
    yield srv, log, app
    srv.stop()


def _get(url: str, method: str = "GET") -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=120) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_export_web_writes_a_static_folder_and_replaces_only_its_own(tmp_path):
    _need_page()
    out = tmp_path / "site"
    config = export_web.export_web(out)
    for rel in ("index.html", "app.js", "style.css", "src/pipeline.js", "_headers", "models/yunet.onnx",
                "models/classifier.onnx", "models/config.json", *(f"ort/{n}" for n in export_web.ORT_FILES)):
        assert (out / rel).is_file(), rel
    assert config == json.loads((out / "models/config.json").read_text())
    assert config["model"] == DEFAULT and config["labels"] == list(EMOTIONS)
    assert config["classifier"]["sha256"] == file_sha256(out / "models/classifier.onnx")
    assert config["detector"]["sha256"] == file_sha256(out / "models/yunet.onnx")
    headers = (out / "_headers").read_text()
    assert "Cross-Origin-Opener-Policy: same-origin" in headers and "Cross-Origin-Embedder-Policy: require-corp" in headers
    for page_file in ("index.html", "app.js"):  # offline: nothing fetched from another site
        assert not re.search(r"https?://", (out / page_file).read_text()), page_file
    assert "./ort/" in (out / "app.js").read_text() and "./models/classifier.onnx" in (out / "app.js").read_text()
    (out / "stale.txt").write_text("x")
    export_web.export_web(out)  # an earlier export is replaced whole
    assert not (out / "stale.txt").exists() and (out / "index.html").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.fixture
def bare_browser(tmp_path) -> Path:
    """The page's folder without node_modules (as before `npm ci`)."""
    bare = tmp_path / "browser"
    (bare / "src").mkdir(parents=True)
    for name in export_web.PAGE_FILES:
        shutil.copyfile(export_web.BROWSER_DIR / name, bare / name)
    (bare / "src" / "pipeline.js").write_text("export {};\n")
    return bare


def test_export_web_refuses_foreign_folders_and_names_npm_ci(tmp_path, bare_browser, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert command.dispatch(["export-web", "--out", str(other)]) == 1
    assert "no earlier `ferjax export-web` wrote" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    with pytest.raises(export_web.PageUnavailable, match=r"run `npm ci` in .*browser"):
        export_web.export_web(tmp_path / "site", browser_dir=bare_browser)
    assert not (tmp_path / "site").exists()
    with pytest.raises(SystemExit) as e:
        command.dispatch(["export-web", "--help"])
    assert e.value.code == 0 and "usage: ferjax export-web" in capsys.readouterr().out


def test_local_page_headers_types_and_refusals(server):
    _need_page()
    srv, _, _ = server
    status, headers, body = _get(f"{srv.url}/local/")  # no API key needed for the page's files
    assert status == 200 and b'src="app.js"' in body and headers["content-type"].startswith("text/html")
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cross-origin-embedder-policy"] == "require-corp"
    expected = {"app.js": "text/javascript", "src/pipeline.js": "text/javascript",
                "ort/ort.wasm.min.mjs": "text/javascript", "ort/ort-wasm-simd-threaded.wasm": "application/wasm",
                "models/classifier.onnx": "application/octet-stream", "models/config.json": "application/json"}
    for rel, ctype in expected.items():
        status, headers, body = _get(f"{srv.url}/local/{rel}")
        assert status == 200 and headers["content-type"].split(";")[0] == ctype, (rel, status, headers)
        assert headers["cross-origin-embedder-policy"] == "require-corp", rel
    assert len(body) and json.loads(body)["labels"] == list(EMOTIONS)
    status, headers, body = _get(f"{srv.url}/local/ort/ort-wasm-simd-threaded.wasm", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1_000_000, headers
    assert headers["cross-origin-opener-policy"] == "same-origin"
    for rel in ("../serve.py", "%2e%2e/serve.py", "src/../../serve.py", "..%2fexport_web.py"):
        status, _, body = _get(f"{srv.url}/local/{rel}")
        assert status in (400, 404) and b"import" not in body, (rel, status, body[:200])
    assert _get(f"{srv.url}/local/_headers")[0] == 404  # a static hosts' file, not a page file
    assert _get(f"{srv.url}/local/package.json")[0] == 404
    assert _get(f"{srv.url}/v1/models")[0] == 401  # the service itself still wants its key


def test_local_page_answers_503_saying_what_is_missing(tmp_path, bare_browser, monkeypatch):
    """Without node_modules, then without the onnx extra (and no cached export): one line each."""
    from fastapi import FastAPI

    from ferjax.jax_setup import CACHE_ENV
    from ferjax.serve import BackgroundServer
    from ferjax.serve_local import mount

    app = FastAPI()
    page = mount(app)
    srv = BackgroundServer(app)
    try:
        page.browser_dir = bare_browser
        status, headers, body = _get(f"{srv.url}/local/")
        assert status == 503 and body.decode().count("\n") == 1 and "npm ci" in body.decode(), body
        assert headers["content-type"].startswith("text/plain")
        try:
            export_web.static_files()
        except export_web.PageUnavailable:
            return  # the second case needs onnxruntime-web installed
        page.browser_dir = export_web.BROWSER_DIR
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax2onnx" else real(name, *a))
        status, _, body = _get(f"{srv.url}/local/index.html")
        assert status == 503 and "pip install 'ferjax[onnx]'" in body.decode() and "jax2onnx" in body.decode(), body
    finally:
        srv.stop()


def test_page_labels_faces_in_chromium_without_server_inference(server, tmp_path):
    _need_page()
    if not ONE_FACE.is_file():
        pytest.skip(f"real video {ONE_FACE} not present")
    srv, log, app = server
    try:
        y4m = page_fps.write_y4m(ONE_FACE, tmp_path / "camera.y4m", frames=72, step=2)
        app.state.local_page.models()  # the classifier's ONNX export on first use, before the clock
        with page_fps.Chromium(f"{srv.url}/local/?autostart=1", y4m, tmp_path / "profile") as page:
            checked = []

            def enough(state: dict) -> bool:
                for face in state.get("lastFaces") or []:
                    checked.append(face)
                return state.get("distinctFrames", 0) >= 30

            state = page_fps.wait_for(page, enough, timeout_s=60)
    except page_fps.Unavailable as e:
        pytest.skip(str(e))
    assert state.get("distinctFrames", 0) >= 30, state
    assert state["errors"] == 0 and state["ready"] and state["fps"] > 0, state
    assert state["threads"] >= 1 and state["backend"].startswith("ONNX Runtime Web"), state
    assert state["crossOriginIsolated"], state  # /local/'s COOP/COEP headers took effect
    assert checked, state
    for face in checked:
        x1, y1, x2, y2 = face["box"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480, face
        assert face["label"] in EMOTIONS and len(face["probabilities"]) == 7, face
        assert abs(sum(face["probabilities"]) - 1) < 1e-3, face
        assert face["label"] == EMOTIONS[int(np.argmax(face["probabilities"]))], face
    assert log.server_inference() == [], log.seen
    assert app.state.batcher.stats.requests == 0
    assert ("http", "/local/models/classifier.onnx") in log.seen
