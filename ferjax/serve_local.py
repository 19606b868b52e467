"""`ferjax serve`'s /local/ page: the client-side page of `ferjax.export_web` (detection and
expressions computed in the browser), served as static files beside the service.

Only the files `ferjax.export_web` lists are served (any other path is 404, a path with `..` is
400), each with its media type and the cross-origin isolation headers wasm threads need. No API
key: they are public code and weights, like the live page. The classifier is exported to ONNX on
the first request for it (seconds, once per cache); when onnxruntime-web (`npm ci`) or the onnx
extra is missing, /local/ answers 503 with one line saying so and the rest of the service works.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ferjax import export_web

PATH = "/local/"
HEADERS = {**export_web.ISOLATION_HEADERS, "Cross-Origin-Resource-Policy": "same-origin",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


class LocalPage:
    """The page's files for one server, found on first use: the static part at once, the models
    (`export_web.model_files`, which may export the classifier) on the first request under models/.
    Failures are not kept, so installing what was missing needs no restart."""

    def __init__(self, model: str | None = None, browser_dir: Path = export_web.BROWSER_DIR):
        self.model, self.browser_dir = model, Path(browser_dir)
        self._static: dict[str, Path] | None = None
        self._models: dict[str, Path | bytes] | None = None
        self._lock = threading.Lock()

    def static(self) -> dict[str, Path]:
        """The page, src/ and ort/ files; PageUnavailable or ValueError when it cannot be served."""
        if self._static is None:
            files = export_web.static_files(self.browser_dir)
            self.model = export_web.check_model(self.model)
            self._static = files
        return self._static

    def models(self) -> dict[str, Path | bytes]:
        """models/ (blocking: the first call may export the classifier; one export at a time)."""
        with self._lock:
            if self._models is None:
                self._models = export_web.model_files(self.model, self.browser_dir)
            return self._models


def refused_path(rel: str) -> bool:
    """A path that could leave the page's folder: `..` or `.` segments, backslashes, NUL, absolute."""
    return rel.startswith("/") or "\\" in rel or "\0" in rel or any(p in (".", "..") for p in rel.split("/"))


def mount(app: Any, model: str | None = None) -> LocalPage:
    """Adds GET (and HEAD) /local and /local/{path} to FastAPI `app`; returns the LocalPage (also app.state.local_page)."""
    import anyio  # noqa: PLC0415
    from fastapi.responses import FileResponse, RedirectResponse, Response  # noqa: PLC0415

    page = LocalPage(model)
    app.state.local_page = page

    def text(status: int, line: str) -> Response:
        return Response(line + "\n", status_code=status, media_type="text/plain; charset=utf-8", headers=HEADERS)

    @app.api_route("/local", methods=["GET", "HEAD"], include_in_schema=False)
    async def local_root() -> Response:
        return RedirectResponse("local/", status_code=308)  # relative: works behind a path prefix

    @app.api_route(PATH + "{rel:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def local_file(rel: str) -> Response:
        rel = rel or "index.html"
        if refused_path(rel):
            return text(400, f"path {rel!r} is outside the page")
        try:
            files: dict[str, Path | bytes] = dict(page.static())
            if rel.startswith("models/"):
                files.update(await anyio.to_thread.run_sync(page.models))
        except (export_web.PageUnavailable, ValueError, OSError) as e:
            return text(503, f"the in-browser page is unavailable: {e}".replace("\n", " "))
        source = files.get(rel)
        if source is None:
            return text(404, f"no file {rel!r} in the in-browser page")
        media = export_web.MEDIA_TYPES.get(Path(rel).suffix, "application/octet-stream")
        if isinstance(source, bytes):
            return Response(source, media_type=media, headers=HEADERS)
        return FileResponse(source, media_type=media, headers=HEADERS)

    return page
