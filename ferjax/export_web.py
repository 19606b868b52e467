"""The client-side web page as a static folder: face detection and expression recognition run in
the browser (ONNX Runtime Web, wasm), nothing is sent to a server.

    ferjax export-web --out DIR [--model NAME]
    ferjax.export_web.export_web("DIR", model=None)

The folder holds the page (index.html, app.js, style.css), its JavaScript modules (src/), the
onnxruntime-web files it loads (ort/, copied from ferjax/browser/node_modules: run `npm ci` in
ferjax/browser first), the detector (models/yunet.onnx, shipped with ferjax), the classifier
(models/classifier.onnx, exported from a registered pretrained model: the onnx extra) and
models/config.json (labels, model name, model card, sha256s). Any static host serves it; wasm
threads need the page cross-origin isolated, which `_headers` asks of hosts that read that file
(Netlify, Cloudflare Pages); elsewhere the page runs on one thread. `ferjax serve` serves the
same files at /local/ (`page_files`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from ferjax import __version__
from ferjax.atomic import atomic_folder, file_sha256

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
PAGE_FILES = ("index.html", "app.js", "style.css")
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
CONFIG = "models/config.json"
MARKER = "ferjax export-web"  # config.json's "written_by": an earlier export may be replaced
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".wasm": "application/wasm", ".onnx": "application/octet-stream",
               ".json": "application/json", ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8"}


class PageUnavailable(RuntimeError):
    """The page cannot be built here; the message is one line saying what to install or fix."""


def ort_dir(browser_dir: Path = BROWSER_DIR) -> Path:
    """onnxruntime-web's dist folder under `browser_dir`, holding every file in ORT_FILES."""
    dist = browser_dir / "node_modules" / "onnxruntime-web" / "dist"
    missing = [name for name in ORT_FILES if not (dist / name).is_file()]
    if missing:
        raise PageUnavailable(f"onnxruntime-web is not installed: {dist} lacks {', '.join(missing)}; "
                              f"run `npm ci` in {browser_dir}")
    return dist


def _ort_version(dist: Path) -> str | None:
    try:
        return json.loads((dist.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def static_files(browser_dir: Path = BROWSER_DIR) -> dict[str, Path]:
    """The page, its modules (src/) and onnxruntime-web's files (ort/): relative path -> file.
    Raises PageUnavailable naming what is missing (e.g. `npm ci` not run)."""
    browser_dir = Path(browser_dir)
    files: dict[str, Path] = {}
    for name in PAGE_FILES:
        if not (browser_dir / name).is_file():
            raise PageUnavailable(f"page file {browser_dir / name} is missing (a damaged ferjax install)")
        files[name] = browser_dir / name
    src = browser_dir / "src"
    if not (src / "pipeline.js").is_file():
        raise PageUnavailable(f"{src / 'pipeline.js'} is missing (the page's pipeline module)")
    files.update({f"src/{p.relative_to(src).as_posix()}": p for p in sorted(src.rglob("*.js"))})
    dist = ort_dir(browser_dir)
    files.update({f"ort/{name}": dist / name for name in ORT_FILES})
    return files


def check_model(model: str | None = None) -> str:
    """The registered model's name (default: the shipped one), once it is known that its ONNX file
    is cached or can be exported: ValueError for an unknown name, PageUnavailable without the
    onnx extra. Fast: nothing is exported."""
    from ferjax import export, pretrained  # noqa: PLC0415
    from ferjax.registry import PRETRAINED  # noqa: PLC0415

    model = model or pretrained.DEFAULT
    if model not in PRETRAINED.names():
        raise ValueError(f"unknown pretrained model {model!r}: expected one of {', '.join(PRETRAINED.names())}")
    cached = export.cache_dir() / f"{model}-{pretrained.weights_sha256(model)}{export.SUFFIX}"
    missing = [m for m in ("jax2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing and not cached.is_file():
        raise PageUnavailable(f"the classifier cannot be exported to ONNX: {export.INSTALL_HINT}; "
                              f"missing: {', '.join(missing)}")
    return model


def model_files(model: str | None = None, browser_dir: Path = BROWSER_DIR) -> dict[str, Path | bytes]:
    """models/: the detector, the classifier (exported to ONNX on first use, seconds: see
    `ferjax.export.cached_onnx`), YuNet's licence and config.json (bytes)."""
    from ferjax import export  # noqa: PLC0415
    from ferjax.realtime import models  # noqa: PLC0415

    model = check_model(model)
    yunet = models.locate(models.YUNET)
    try:
        classifier = export.cached_onnx(model)
    except ImportError as e:
        raise PageUnavailable(f"the classifier cannot be exported to ONNX: {e}") from None
    card = json.loads(export.card_path(classifier).read_text())
    files: dict[str, Path | bytes] = {"models/yunet.onnx": yunet, "models/classifier.onnx": classifier}
    if (yunet.parent / "YUNET_LICENSE.txt").is_file():
        files["models/YUNET_LICENSE.txt"] = yunet.parent / "YUNET_LICENSE.txt"
    dist = Path(browser_dir) / "node_modules" / "onnxruntime-web" / "dist"
    config = {"written_by": MARKER, "ferjax_version": __version__, "model": model, "labels": card["labels"],
              "classifier": {"file": "classifier.onnx", "sha256": file_sha256(classifier), "card": card},
              "detector": {"file": "yunet.onnx", "name": "yunet", "sha256": file_sha256(yunet),
                           "source": models.YUNET.url, "license": "MIT (models/YUNET_LICENSE.txt)"},
              "onnxruntime_web": {"version": _ort_version(dist), "license": "MIT", "files": list(ORT_FILES)}}
    files[CONFIG] = (json.dumps(config, indent=2) + "\n").encode()
    return files


def page_files(model: str | None = None, browser_dir: Path = BROWSER_DIR) -> dict[str, Path | bytes]:
    """Every file of the static folder: relative path -> the file to copy, or the bytes to write
    (`static_files`, `model_files` and `_headers`). The fast checks run before the export."""
    files: dict[str, Path | bytes] = dict(static_files(browser_dir))
    check_model(model)
    files.update(model_files(model, browser_dir))
    files["_headers"] = ("/*\n" + "".join(f"  {k}: {v}\n" for k, v in ISOLATION_HEADERS.items())).encode()
    return files


def _previous_export(out: Path) -> bool:
    """True when `out` is a folder an earlier export-web wrote (its config names MARKER)."""
    try:
        return json.loads((out / CONFIG).read_text()).get("written_by") == MARKER
    except (OSError, ValueError, AttributeError):
        return False


def export_web(out: str | os.PathLike, model: str | None = None, browser_dir: Path = BROWSER_DIR) -> dict:
    """Writes the page's static folder at `out` (see the module docstring); returns models/config.json.

    The folder appears whole or not at all (written beside it, then renamed). An existing folder
    is replaced only when it is empty or an earlier export-web; any other file or non-empty folder
    raises FileExistsError. Raises PageUnavailable when onnxruntime-web or the onnx extra is missing.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file: expected a folder to write the page into")
    replace = out.is_dir() and (not any(out.iterdir()) or _previous_export(out))
    if out.is_dir() and not replace:
        raise FileExistsError(f"{out} is a non-empty folder that no earlier `ferjax export-web` wrote "
                              f"(no {CONFIG}); choose another --out or empty it")
    files = page_files(model, browser_dir)
    with atomic_folder(out, overwrite=replace) as tmp:
        for rel, source in files.items():
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                dst.write_bytes(source)
            else:
                shutil.copyfile(source, dst)
    return json.loads(files[CONFIG])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="ferjax export-web",
        description="Write the client-side web page as a static folder: face detection (YuNet) and "
                    "expression recognition run in the browser on ONNX Runtime Web; no server inference. "
                    "Needs onnxruntime-web (`npm ci` in ferjax/browser) and the onnx extra "
                    "(pip install 'ferjax[onnx]'). Serve the folder with any static host; wasm threads need "
                    "the headers in its _headers file (COOP/COEP).")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (new, empty, or an earlier export-web, which is replaced)")
    p.add_argument("--model", default=None,
                   help="registered pretrained model (default: the shipped one; see `ferjax list`)")
    a = p.parse_args(argv)
    try:
        config = export_web(a.out, a.model)
    except (PageUnavailable, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"ferjax export-web: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(a.out), "model": config["model"],
                      "classifier_sha256": config["classifier"]["sha256"],
                      "detector_sha256": config["detector"]["sha256"],
                      "onnxruntime_web": config["onnxruntime_web"]["version"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
