"""`ferjax analyze PATH...`: expressions in photos, folders of photos and videos, as JSON lines.

    ferjax analyze photo.jpg holiday/ clip.mp4 [--detector yunet] [--model NAME] [--out DIR]

One JSON object per photo ({"path", "width", "height", "faces"}) or per video frame
({"path", "frame", "faces"}); an unusable file (also a video with no decodable frame) gives
{"path", "error"} and the rest goes on (exit status 1 when any file failed). `--out DIR` writes
annotated copies, and is refused when any copy would be written over an input. Photos are read in
batches whose faces share one jitted predict. Usage errors are one line and exit status 2, found
before the models load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

import cv2

from ferjax.realtime.capture import IMAGE_EXTS

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


def parser() -> argparse.ArgumentParser:
    from ferjax import images  # noqa: PLC0415
    from ferjax.analyzer import AUTO, BACKENDS, DEFAULT_DETECTOR, MAX_SIDE  # noqa: PLC0415
    from ferjax.jax_setup import DEFAULT_JAX_CACHE  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="ferjax analyze", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="PATH", help="photos, folders of photos, videos")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, help="a registered detector (default %(default)s)")
    p.add_argument("--model", default=None, help="a registered pretrained model (default: the shipped one for photos, "
                   "ferjax.pretrained.VIDEO_DEFAULT for videos)")
    p.add_argument("--backend", choices=(*BACKENDS, AUTO), default=AUTO,
                   help="where the classifier runs: jax, onnxruntime (the onnx extra) or auto (default)")
    p.add_argument("--detector-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="detector keyword argument, e.g. threshold=0.8 (repeatable)")
    p.add_argument("--models-dir", default=None, help="folder of third-party detector files")
    p.add_argument("--out", default=None, metavar="DIR", help="write annotated copies here")
    p.add_argument("--jsonl", default=None, metavar="FILE", help="write JSON lines here (default stdout)")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--batch", type=_int_from(1), default=16, help="photos per batched predict (default %(default)s)")
    p.add_argument("--max-side", type=_int_from(1), default=MAX_SIDE,
                   help="photos: longest side detected at full resolution (default %(default)s)")
    p.add_argument("--max-pixels", type=_int_from(1), default=images.DEFAULT_MAX_PIXELS,
                   help="refuse photos declaring more pixels (default %(default)s)")
    p.add_argument("--max-frames", type=_int_from(0), default=0, help="videos: stop after N frames (0: all)")
    p.add_argument("--jax-cache-dir", default=DEFAULT_JAX_CACHE, help="persistent JAX compilation cache ('' disables)")
    return p


def _int_from(least: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `least` (argparse reports anything else as a usage error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


class UsageError(ValueError):
    """A command line that cannot run; shown as one line, exit status 2."""


def _detector_args(items: Sequence[str]) -> dict:
    """KEY=VALUE strings -> kwargs; values parse as JSON when they can (numbers, true, null)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--detector-arg {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def expand(paths: Sequence[str], recursive: bool = False,
           unreadable: list[tuple[Path, str]] | None = None) -> Iterator[Path]:
    """Files named on the command line; folders give their photos and videos, sorted. A folder
    that cannot be listed is appended to `unreadable` as (folder, reason) when given."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            try:
                found = list(p.rglob("*") if recursive else p.iterdir())
            except OSError as e:
                if unreadable is not None:
                    unreadable.append((p, f"{p}: cannot list the folder ({e.strerror or type(e).__name__})"))
                continue
            yield from sorted(f for f in found if f.is_file() and f.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS)
        else:
            yield p


def is_video(path: Path) -> bool:
    """Whether the command treats `path` as a video (by its suffix, as folders are listed)."""
    return path.suffix.lower() in VIDEO_EXTS


class _Outputs:
    """Annotated copies under `--out` with unique names, planned for every input before any is
    written, so that a copy that would land on an input (the same file, through a symlink or a
    hard link too) is refused before anything runs."""

    def __init__(self, folder: str | None, inputs: Sequence[Path]):
        self.folder = Path(folder) if folder else None
        self.planned: dict[int, Path] = {}
        used: set[str] = set()
        if self.folder is None:
            return
        for i, src in enumerate(inputs):
            suffix = ".mp4" if is_video(src) else (src.suffix.lower() if src.suffix.lower() in (".jpg", ".jpeg", ".png")
                                                   else ".png")
            name, n = f"{src.stem}{suffix}", 1
            while name in used:
                n += 1
                name = f"{src.stem}_{n}{suffix}"
            used.add(name)
            self.planned[i] = self.folder / name

    def path(self, index: int) -> Path | None:
        """Where the annotated copy of input number `index` goes (None without --out)."""
        return self.planned.get(index)

    def check(self, inputs: Sequence[Path], jsonl: str | None) -> None:
        """Raises UsageError when the output folder holds an input (a copy could be written over it,
        or over a neighbour of the same name), a copy would be an input by another path (symlink,
        hard link), or the JSON lines file would be an input or a copy."""
        taken = _Identities(inputs)
        if self.folder is not None:
            here = os.path.realpath(self.folder)
            for src in inputs:  # the folder it was named in, and the one its file really is in
                if here in (os.path.realpath(src.parent), os.path.dirname(os.path.realpath(src))):
                    raise UsageError(f"--out {self.folder} holds the input {src}: annotated copies would be written "
                                     f"among the inputs; choose a folder that holds none of them")
        for i, out in self.planned.items():
            hit = taken.find(out)
            if hit is not None:
                raise UsageError(f"--out {self.folder}: the annotated copy of {inputs[i]} would be written to {out}, "
                                 f"which is the input {hit}; choose a folder that holds none of the inputs")
        if jsonl:
            hit = taken.find(Path(jsonl))
            if hit is not None:
                raise UsageError(f"--jsonl {jsonl} is the input {hit}; it would be overwritten")
            copy = _Identities(list(self.planned.values())).find(Path(jsonl))
            if copy is not None:
                raise UsageError(f"--jsonl {jsonl} is also where the annotated copy {copy} goes")
        if self.folder is not None and self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"--out {self.folder}: exists and is not a folder")

    def create(self) -> None:
        """Creates the output folder (after every check passed)."""
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"--out {self.folder}: cannot create the folder ({e.strerror or e})") from None


class _Identities:
    """The files behind a list of paths: their resolved paths (symlinks followed) and, for those
    that exist, their device and inode (hard links)."""

    def __init__(self, paths: Sequence[Path]):
        self.by_path: dict[str, Path] = {}
        self.by_inode: dict[tuple[int, int], Path] = {}
        for p in paths:
            self.by_path.setdefault(os.path.realpath(p), p)
            try:
                st = os.stat(p)
                self.by_inode.setdefault((st.st_dev, st.st_ino), p)
            except OSError:
                pass

    def find(self, path: Path) -> Path | None:
        """The listed path that `path` is the same file as, or None."""
        hit = self.by_path.get(os.path.realpath(path))
        if hit is None:
            try:
                st = os.stat(path)
                hit = self.by_inode.get((st.st_dev, st.st_ino))
            except OSError:
                pass
        return hit


def _check_jsonl(jsonl: str | None, out_folder: Path | None) -> None:
    """Refuses a --jsonl file that could not be written, before any work (its folder may be the
    --out folder, created later)."""
    if not jsonl:
        return
    target = Path(jsonl)
    if target.is_dir():
        raise UsageError(f"--jsonl {jsonl}: is a folder")
    parent = target.parent
    if out_folder is not None and os.path.realpath(parent) == os.path.realpath(out_folder) and not parent.exists():
        return
    if not parent.is_dir():
        raise UsageError(f"--jsonl {jsonl}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"--jsonl {jsonl}: not writable")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (0 ok, 1 some file failed, 2 bad usage)."""
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except UsageError as e:
        print(f"ferjax analyze: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ferjax analyze: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ferjax analyze ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _models(model: str | None) -> tuple[str, str]:
    """(photo model, video model): `--model` for both, else the shipped defaults of each."""
    from ferjax import pretrained  # noqa: PLC0415

    return (model, model) if model else (pretrained.DEFAULT, pretrained.VIDEO_DEFAULT)


def _run(args: argparse.Namespace) -> int:
    """Everything that can be refused is checked first; then the models load and files are analysed."""
    detector_args = _detector_args(args.detector_arg)
    unreadable: list[tuple[Path, str]] = []
    files = list(expand(args.paths, args.recursive, unreadable))
    photos = [f for f in files if not is_video(f)]
    videos = [f for f in files if is_video(f)]
    outs = _Outputs(args.out, photos + videos)
    outs.check(photos + videos, args.jsonl)
    _check_jsonl(args.jsonl, outs.folder)
    outs.create()

    from ferjax.analyzer import Analyzer  # noqa: PLC0415
    from ferjax.jax_setup import enable_jax_cache  # noqa: PLC0415
    from ferjax.registry import RegistryError  # noqa: PLC0415

    enable_jax_cache(args.jax_cache_dir)
    photo_model, video_model = _models(args.model)
    try:
        def make(model: str) -> Analyzer:
            return Analyzer(args.detector, model, detector_args=detector_args, models_dir=args.models_dir,
                            max_side=args.max_side, max_pixels=args.max_pixels, backend=args.backend)

        analyzer = make(photo_model if photos or not videos else video_model)
        video_analyzer = analyzer if not videos or video_model == photo_model or not photos else make(video_model)
    except (RegistryError, OSError, TypeError, ValueError, ImportError) as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    warm_s = analyzer.warmup()  # classifier buckets; not counted in the per-photo time
    if video_analyzer is not analyzer:
        warm_s += video_analyzer.warmup()
    try:
        sink = open(args.jsonl, "w") if args.jsonl else sys.stdout
    except OSError as e:
        raise UsageError(f"--jsonl {args.jsonl}: {e.strerror or e}") from None
    stats = {"photos": 0, "frames": 0, "faces": 0, "errors": 0, "photo_s": 0.0}
    try:
        for folder, reason in unreadable:
            _error(sink, stats, folder, reason)
        for start in range(0, len(photos), args.batch):
            batch = list(range(start, min(start + args.batch, len(photos))))
            _photos(analyzer, [photos[i] for i in batch], [outs.path(i) for i in batch], sink, stats)
        for i, f in enumerate(videos, start=len(photos)):
            _video(video_analyzer, f, outs.path(i), sink, stats, args.max_frames or None)
    finally:
        if sink is not sys.stdout:
            sink.close()
    per = stats["photo_s"] / stats["photos"] * 1e3 if stats["photos"] else 0.0
    print(f"ferjax analyze: {stats['photos']} photos ({per:.0f} ms each incl. decode), {stats['frames']} video "
          f"frames, {stats['faces']} faces, {stats['errors']} errors; classifier warm-up {warm_s:.1f} s",
          file=sys.stderr)
    return 1 if stats["errors"] else 0


def _error(sink: IO[str], stats: dict, path: Path, message: str) -> None:
    """The one line of a file that could not be analysed."""
    stats["errors"] += 1
    sink.write(json.dumps({"path": str(path), "error": message}) + "\n")


def _write_copy(path: Path, out: Path, pixels, stats: dict) -> None:
    """Writes an annotated photo; a failure is counted and said on stderr (its JSON line stands)."""
    try:
        ok = cv2.imwrite(str(out), pixels)
    except cv2.error:
        ok = False
    if not ok:
        stats["errors"] += 1
        print(f"ferjax analyze: {path}: could not write the annotated copy {out}", file=sys.stderr)


def _photos(analyzer, paths: list[Path], outs: list[Path | None], sink: IO[str], stats: dict) -> None:
    t = time.perf_counter()
    frames = analyzer.load_each(paths)
    results = analyzer.analyze_loaded(frames)
    stats["photo_s"] += time.perf_counter() - t
    for p, out, frame, faces in zip(paths, outs, frames, results):
        if isinstance(faces, Exception):
            _error(sink, stats, p, str(faces))
            continue
        stats["photos"] += 1
        stats["faces"] += len(faces)
        sink.write(json.dumps({"path": str(p), "width": frame.shape[1], "height": frame.shape[0],
                               "faces": [f.to_json() for f in faces]}) + "\n")
        if out is not None:
            _write_copy(p, out, analyzer.draw(frame, faces), stats)
    sink.flush()


def _video(analyzer, path: Path, out: Path | None, sink: IO[str], stats: dict, max_frames: int | None) -> None:
    """One line per analysed frame; one error line when the video cannot be opened, decodes no
    frame, or its annotated copy cannot be written."""
    from ferjax.realtime.capture import SourceError  # noqa: PLC0415
    from ferjax.realtime.pipeline import open_video_writer  # noqa: PLC0415

    writer, frames = None, 0
    try:
        for r in analyzer.video(path, max_frames, keep_frames=out is not None):
            frames += 1
            stats["frames"] += 1
            stats["faces"] += len(r.faces)
            sink.write(json.dumps({"path": str(path), **r.to_json()}) + "\n")
            if out is not None:
                if writer is None:
                    fps = cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) or 25.0
                    writer = open_video_writer(str(out), fps, r.frame.shape)
                writer.write(analyzer.draw(r.frame, r.faces))
        if frames == 0:
            _error(sink, stats, path, f"{path}: the video opens but no frame could be decoded")
    except (SourceError, OSError) as e:
        _error(sink, stats, path, str(e))
    finally:
        if writer is not None:
            writer.release()
    sink.flush()
