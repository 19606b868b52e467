"""`ferjax analyze PATH...`: expressions in photos, folders of photos and videos, as JSON lines.

    ferjax analyze photo.jpg holiday/ clip.mp4 [--detector yunet] [--model NAME] [--out DIR]

One JSON object per photo ({"path", "width", "height", "faces"}) or per video frame
({"path", "frame", "faces"}); an unusable file gives {"path", "error"} and the rest goes on
(exit status 1 when any file failed). `--out DIR` writes annotated copies. Photos are read in
batches whose faces share one jitted predict.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import IO, Iterator, Sequence

import cv2

from ferjax.realtime.capture import IMAGE_EXTS

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


def parser() -> argparse.ArgumentParser:
    from ferjax import images  # noqa: PLC0415
    from ferjax.analyzer import DEFAULT_DETECTOR, MAX_SIDE  # noqa: PLC0415
    from ferjax.jax_setup import DEFAULT_JAX_CACHE  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="ferjax analyze", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="PATH", help="photos, folders of photos, videos")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, help="a registered detector (default %(default)s)")
    p.add_argument("--model", default=None, help="a registered pretrained model (default: the shipped one)")
    p.add_argument("--detector-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="detector keyword argument, e.g. threshold=0.8 (repeatable)")
    p.add_argument("--models-dir", default=None, help="folder of third-party detector files")
    p.add_argument("--out", default=None, metavar="DIR", help="write annotated copies here")
    p.add_argument("--jsonl", default=None, metavar="FILE", help="write JSON lines here (default stdout)")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--batch", type=int, default=16, help="photos per batched predict (default %(default)s)")
    p.add_argument("--max-side", type=int, default=MAX_SIDE,
                   help="photos: longest side detected at full resolution (default %(default)s)")
    p.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                   help="refuse photos declaring more pixels (default %(default)s)")
    p.add_argument("--max-frames", type=int, default=0, help="videos: stop after N frames (0: all)")
    p.add_argument("--jax-cache-dir", default=DEFAULT_JAX_CACHE, help="persistent JAX compilation cache ('' disables)")
    return p


def _detector_args(items: Sequence[str]) -> dict:
    """KEY=VALUE strings -> kwargs; values parse as JSON when they can (numbers, true, null)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"ferjax analyze: --detector-arg {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def expand(paths: Sequence[str], recursive: bool = False) -> Iterator[Path]:
    """Files named on the command line; folders give their photos and videos, sorted."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            yield from sorted(f for f in found if f.is_file() and f.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS)
        else:
            yield p


class _Outputs:
    """Annotated copies under `--out` with unique names."""

    def __init__(self, folder: str | None):
        self.folder = Path(folder) if folder else None
        self.used: set[str] = set()
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, src: Path, suffix: str) -> Path | None:
        if self.folder is None:
            return None
        name, n = f"{src.stem}{suffix}", 1
        while name in self.used:
            n += 1
            name = f"{src.stem}_{n}{suffix}"
        self.used.add(name)
        return self.folder / name


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (0 ok, 1 some file failed, 2 bad usage)."""
    args = parser().parse_args(argv)
    if args.batch < 1:
        print("ferjax analyze: --batch must be at least 1", file=sys.stderr)
        return 2
    from ferjax.analyzer import Analyzer  # noqa: PLC0415
    from ferjax.registry import RegistryError  # noqa: PLC0415
    from ferjax.jax_setup import enable_jax_cache  # noqa: PLC0415

    enable_jax_cache(args.jax_cache_dir)
    try:
        analyzer = Analyzer(args.detector, args.model, detector_args=_detector_args(args.detector_arg),
                            models_dir=args.models_dir, max_side=args.max_side, max_pixels=args.max_pixels)
    except (RegistryError, FileNotFoundError, TypeError, ValueError) as e:
        print(f"ferjax analyze: {e}", file=sys.stderr)
        return 2
    warm_s = analyzer.warmup()  # classifier buckets; not counted in the per-photo time
    sink = open(args.jsonl, "w") if args.jsonl else sys.stdout
    outs = _Outputs(args.out)
    stats = {"photos": 0, "frames": 0, "faces": 0, "errors": 0, "photo_s": 0.0}
    try:
        files = list(expand(args.paths, args.recursive))
        photos = [f for f in files if f.suffix.lower() not in VIDEO_EXTS]
        for start in range(0, len(photos), args.batch):
            _photos(analyzer, photos[start:start + args.batch], sink, outs, stats)
        for f in files:
            if f.suffix.lower() in VIDEO_EXTS:
                _video(analyzer, f, sink, outs, stats, args.max_frames or None)
    finally:
        if sink is not sys.stdout:
            sink.close()
    per = stats["photo_s"] / stats["photos"] * 1e3 if stats["photos"] else 0.0
    print(f"ferjax analyze: {stats['photos']} photos ({per:.0f} ms each incl. decode), {stats['frames']} video "
          f"frames, {stats['faces']} faces, {stats['errors']} errors; classifier warm-up {warm_s:.1f} s",
          file=sys.stderr)
    return 1 if stats["errors"] else 0


def _photos(analyzer, paths: list[Path], sink: IO[str], outs: _Outputs, stats: dict) -> None:
    t = time.perf_counter()
    frames = analyzer.load_each(paths)
    results = analyzer.analyze_loaded(frames)
    stats["photo_s"] += time.perf_counter() - t
    for p, frame, faces in zip(paths, frames, results):
        if isinstance(faces, Exception):
            stats["errors"] += 1
            sink.write(json.dumps({"path": str(p), "error": str(faces)}) + "\n")
            continue
        stats["photos"] += 1
        stats["faces"] += len(faces)
        sink.write(json.dumps({"path": str(p), "width": frame.shape[1], "height": frame.shape[0],
                               "faces": [f.to_json() for f in faces]}) + "\n")
        out = outs.path(p, p.suffix.lower() if p.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png")
        if out is not None:
            cv2.imwrite(str(out), analyzer.draw(frame, faces))
    sink.flush()


def _video(analyzer, path: Path, sink: IO[str], outs: _Outputs, stats: dict, max_frames: int | None) -> None:
    from ferjax.realtime.capture import SourceError  # noqa: PLC0415
    from ferjax.realtime.pipeline import open_video_writer  # noqa: PLC0415

    out, writer = outs.path(path, ".mp4"), None
    try:
        for r in analyzer.video(path, max_frames, keep_frames=out is not None):
            stats["frames"] += 1
            stats["faces"] += len(r.faces)
            sink.write(json.dumps({"path": str(path), **r.to_json()}) + "\n")
            if out is not None:
                if writer is None:
                    fps = cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) or 25.0
                    writer = open_video_writer(str(out), fps, r.frame.shape)
                writer.write(analyzer.draw(r.frame, r.faces))
    except SourceError as e:
        stats["errors"] += 1
        sink.write(json.dumps({"path": str(path), "error": str(e)}) + "\n")
    finally:
        if writer is not None:
            writer.release()
    sink.flush()
