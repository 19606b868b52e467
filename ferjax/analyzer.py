"""The one construction path for every front-end (Python API, command line, HTTP service, the
realtime tasks): a registered detector + a pretrained classifier, kept loaded, applied to
photos, batches of photos or video.

    import ferjax
    faces = ferjax.analyze("photo.jpg")                 # zero configuration: YuNet + the shipped model
    analyzer = ferjax.Analyzer(detector="mtcnn")        # keeps both models loaded and compiled
    for frame in analyzer.video("clip.mp4"): ...        # per-frame faces with track ids

Photos are detected at full resolution up to `max_side` pixels on the longer side (larger images
are scaled down for detection; crops always come from the original pixels); video runs each
detector at its working width (`detect_width`): "auto" (the built-in detectors' default) adapts
it per stream to the faces found, rescanning at full width (`ferjax.realtime.width`); a number
fixes it. In every mode the copy a detector sees is at most `max_side` on its longer side (a
tall 320x78000 frame too).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ferjax import images
from ferjax.data.records import EMOTIONS
from ferjax.inference import DEFAULT_BUCKETS, Predictor
from ferjax.realtime.detect import Detector
from ferjax.realtime.faces import Face, draw_faces, make_faces
from ferjax.realtime.pipeline import Pipeline
from ferjax.realtime.tracker import IoUTracker
from ferjax.realtime.width import RESCAN_EVERY, capped_width, fixed_width

DEFAULT_DETECTOR = "yunet"
MAX_SIDE = 2048  # photos: longest side detected at full resolution (faces of ~12 px and up)
BACKENDS = ("jax", "onnxruntime")  # where the classifier runs (the detector stays on OpenCV / JAX)
AUTO = "auto"
# What `backend="auto"` picks where the onnx extra is installed (`python -m ferjax.backend_bench`
# decides it: ONNX Runtime only when its whole-pipeline FPS is >= 10% higher on every shared video).
AUTO_PREFERS = "onnxruntime"


def onnx_available() -> bool:
    """Whether the onnx extra (jax2onnx, onnx, onnxruntime) is importable."""
    import importlib.util  # noqa: PLC0415

    return all(importlib.util.find_spec(m) is not None for m in ("jax2onnx", "onnx", "onnxruntime"))


def resolve_backend(backend: str | None, model: Any = None, classifier: str | None = None) -> str:
    """The backend an Analyzer runs: `backend` itself, or for "auto"/None `AUTO_PREFERS` where the
    onnx extra is installed and the classifier is a registered pretrained model (a JAX
    `Predictor` or random weights stay on JAX), else "jax". Unknown names raise ValueError."""
    backend = backend or AUTO
    if backend not in (*BACKENDS, AUTO):
        raise ValueError(f"backend={backend!r}: expected one of {(*BACKENDS, AUTO)}")
    if backend != AUTO:
        return backend
    if model is not None and not isinstance(model, str):  # a loaded predictor runs where it was built
        from ferjax import export  # noqa: PLC0415

        return "onnxruntime" if isinstance(model, export.OnnxPredictor) else "jax"
    if AUTO_PREFERS == "jax" or isinstance(model, Predictor) or classifier or not onnx_available():
        return "jax"
    return AUTO_PREFERS


def build_detector(name: str, args: Mapping[str, Any] | None = None,
                   settings: Mapping[str, Any] | None = None) -> Detector:
    """The registered detector `name` built with `args`.

    `args` are checked against the bounds the detector was registered with (RegistryError).
    `settings` holds framework-wide options (an experiment config works). A factory receives
    `models_dir` when it declares that parameter (or takes **kwargs), and each parameter listed
    in its `config_args` mapping (parameter -> settings key) when that key is set.
    """
    from ferjax.registry import DETECTORS  # noqa: PLC0415

    factory = DETECTORS.get(name)
    kwargs = dict(args or {})
    settings = settings or {}
    declared = {"models_dir": "models_dir", **getattr(factory, "config_args", {})}
    accepted = _accepted(factory)
    for param, key in declared.items():
        value = settings.get(key)
        if value and (param in accepted or "**" in accepted):
            kwargs.setdefault(param, value)
    DETECTORS.check_args(name, kwargs)  # the bounds it was registered with, as configs get them
    return factory(**kwargs)


def _accepted(factory: Callable[..., Any]) -> set[str]:
    """Keyword names a factory accepts ("**" when it takes any)."""
    params = inspect.signature(factory).parameters
    return set(params) | ({"**"} if any(p.kind is p.VAR_KEYWORD for p in params.values()) else set())


@dataclasses.dataclass
class FrameFaces:
    """The faces of one video frame (`index` counts decoded frames) and per-stage milliseconds."""

    index: int
    faces: list[Face]
    ms: dict[str, float]
    frame: np.ndarray | None = dataclasses.field(default=None, repr=False)  # BGR, when asked for

    def to_json(self) -> dict:
        return {"frame": self.index, "faces": [f.to_json() for f in self.faces],
                "ms": {k: round(v, 3) for k, v in self.ms.items()}}


class Analyzer:
    """A detector and an expression classifier, loaded once and reused for every image.

    One Analyzer serves one thread at a time (OpenCV detectors keep per-call state); threads
    that share one go through `ferjax.serve_batch.Batcher`, as the HTTP service does.

    Args:
      detector: a registered detector name (`ferjax.registry.DETECTORS.names()`) or a detector
        object (callable BGR frame -> list of `Detection`).
      model: a registered pretrained model (default `ferjax.pretrained.DEFAULT`), or a loaded
        `Predictor` to share (its compiled functions are reused).
      detector_args: keyword arguments of the detector (e.g. {"threshold": 0.8}).
      models_dir: where third-party detector files are (YuNet ships with ferjax).
      settings: further framework options components may declare (e.g. `mtcnn_weights_dir`).
      classifier: a registered classifier with random weights instead of `model` (speed runs only).
      max_side: photos larger than this on their longer side are scaled down for detection.
      max_pixels: encoded images declaring more pixels are refused before decoding.
      smoothing: video only: track faces (IoU) and average each track's probabilities.
      rescan_every: video with `detect_width="auto"`: frames between full-width scans.
      backend: where the classifier runs: "jax" (the training and GPU path), "onnxruntime" (the
        pretrained `model` exported to ONNX into ferjax's cache on first use, keyed by its
        weights' sha256; needs the onnx extra) or "auto" (default: see `resolve_backend`). The
        detector is the same either way; `backend` holds the one chosen.
    """

    def __init__(self, detector: str | Detector = DEFAULT_DETECTOR, model: str | Predictor | None = None, *,
                 detector_args: Mapping[str, Any] | None = None, models_dir: str | os.PathLike | None = None,
                 settings: Mapping[str, Any] | None = None, classifier: str | None = None,
                 allow_random: bool = False, buckets: Sequence[int] = DEFAULT_BUCKETS, align: bool = True,
                 margin: float = 0.0, max_faces: int = 64, min_face: int = 12, max_side: int = MAX_SIDE,
                 max_pixels: int = images.DEFAULT_MAX_PIXELS, smoothing: bool = True,
                 smoothing_iou: float = 0.3, smoothing_alpha: float = 0.4, backend: str | None = AUTO,
                 rescan_every: int = RESCAN_EVERY):
        from ferjax.realtime.classify import make_predictor  # noqa: PLC0415

        settings = dict(settings or {})
        if models_dir:
            settings["models_dir"] = str(models_dir)
        self.detector = build_detector(detector, detector_args, settings) if isinstance(detector, str) else detector
        self._detector_spec = (detector, dict(detector_args or {}), settings) if isinstance(detector, str) else None
        self.backend = backend = resolve_backend(backend, model, classifier)
        if backend == "onnxruntime":
            from ferjax import export  # noqa: PLC0415

            if isinstance(model, export.OnnxPredictor):
                self.predictor = model
            elif isinstance(model, Predictor) or classifier:
                raise ValueError("backend='onnxruntime' takes a registered pretrained model name (or an "
                                 "OnnxPredictor), not a JAX Predictor or a random-weights classifier")
            else:
                self.predictor = export.load_onnx_predictor(model or None, buckets)
            self.model_desc = f"pretrained {self.predictor.name} (onnxruntime)"
        elif isinstance(model, Predictor):  # share a loaded, compiled classifier
            self.predictor, self.model_desc = model, f"pretrained {model.name}"
        else:
            self.predictor, self.model_desc = make_predictor(model or None, classifier or None, allow_random,
                                                             buckets)
        self.class_names = tuple(self.predictor.class_names or EMOTIONS)
        self.max_side, self.max_pixels = int(max_side), int(max_pixels)
        self.smoothing, self.rescan_every = bool(smoothing), rescan_every
        self._track_args = (smoothing_iou, smoothing_alpha if smoothing else 1.0)  # alpha 1: ids only
        self._core = Pipeline(self.detector, self.predictor, class_names=self.class_names, align_faces=align,
                              margin=margin, max_faces=max_faces, min_face=min_face)
        self._warm = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], detector: str | None = None) -> "Analyzer":
        """An Analyzer from an experiment config (the `realtime` experiment's fields, all declared there)."""
        name = detector or config["detector"]
        return cls(name, config["pretrained"] or None, detector_args=config["detector_args"].get(name) or {},
                   settings=config, classifier=config["classifier"] or None,
                   allow_random=bool(config["allow_random_classifier"]), buckets=tuple(config["buckets"]),
                   align=config["align"], margin=config["margin"], max_faces=config["max_faces"],
                   smoothing=config["smoothing"], smoothing_iou=config["smoothing_iou"],
                   smoothing_alpha=config["smoothing_alpha"], backend=config.get("backend", AUTO),
                   rescan_every=config.get("rescan_every", RESCAN_EVERY))

    def replica(self) -> "Analyzer":
        """An Analyzer sharing this one's compiled classifier and settings, with a detector of its
        own: OpenCV detectors keep per-call state, so each thread needs its own instance (the
        service runs a fast and a heavy lane side by side). Raises TypeError when this Analyzer
        was given a detector object, which cannot be rebuilt."""
        if self._detector_spec is None:
            raise TypeError(f"detector {self.detector_name!r} was passed as an object: it cannot be replicated")
        twin = copy.copy(self)
        twin.detector = build_detector(*self._detector_spec)
        c = self._core
        twin._core = Pipeline(twin.detector, self.predictor, class_names=self.class_names,
                              align_faces=c.align_faces, margin=c.margin, max_faces=c.max_faces,
                              min_face=c.min_face)
        return twin

    # ------------------------------------------------------------------ building blocks
    @property
    def detector_name(self) -> str:
        return getattr(self.detector, "name", type(self.detector).__name__)

    def pipeline(self, tracking: bool | None = None) -> Pipeline:
        """A video `Pipeline` over this Analyzer's models; with a fresh tracker when `tracking`
        (default: when smoothing), which smooths probabilities only when smoothing."""
        tracker = IoUTracker(*self._track_args) if (self.smoothing if tracking is None else tracking) else None
        c = self._core
        pipe = Pipeline(self.detector, self.predictor, class_names=self.class_names, align_faces=c.align_faces,
                        margin=c.margin, tracker=tracker, max_faces=c.max_faces, min_face=c.min_face,
                        max_side=self.max_side, rescan_every=self.rescan_every)
        pipe.classifier_desc = self.model_desc
        return pipe

    def warmup(self) -> float:
        """Compiles the classifier for every batch bucket (once); seconds spent."""
        if self._warm:
            return 0.0
        self._warm = True
        return self.predictor.warmup()

    def load(self, image: images.ImageInput, channels: str = "bgr") -> np.ndarray:
        """BGR pixels of any accepted input (see `ferjax.images.load_image`), within `max_pixels`."""
        return images.load_image(image, channels=channels, max_pixels=self.max_pixels)

    def photo_width(self, frame: np.ndarray) -> int:
        """Detection width for a photo: its own width, or scaled so the longer side is `max_side`."""
        return capped_width(frame.shape, self.max_side)

    def video_width(self, frame: np.ndarray) -> int:
        """Detection width for a single video frame: the detector's fast working width
        (`detect_width`; "auto" outside a stream: `width.DEFAULT_WIDTH`), narrower where needed
        so that the longer side stays within `max_side` as for photos (`video` adapts it per stream).

        The working width alone bounds nothing for a tall frame: a 320x78000 image was detected at
        full size (25 Mpx, 3 s of the one worker); capped, it is detected at 8x2048."""
        w = frame.shape[1]
        working = fixed_width(getattr(self.detector, "detect_width", None)) or w
        return min(working, w, self.photo_width(frame))

    def detection_width(self, frame: np.ndarray, video: bool = False) -> int:
        """The width `frame` is detected at: `video_width` for video frames, else `photo_width`."""
        return self.video_width(frame) if video else self.photo_width(frame)

    def detection_pixels(self, frame: np.ndarray, video: bool = False) -> int:
        """Pixels of the copy the detector sees (what a detection costs, roughly)."""
        h, w = frame.shape[:2]
        width = self.detection_width(frame, video)
        return width * max(1, round(h * width / max(w, 1)))

    # ------------------------------------------------------------------ public API
    def analyze(self, image: images.ImageInput, channels: str = "bgr") -> list[Face]:
        """Faces in one photo: box, detector score, landmarks, label and probabilities by class.

        `image`: a path, encoded bytes, a PIL image, or a NumPy array in `channels` order
        ("bgr" as OpenCV gives, or "rgb"). Raises `ferjax.images.ImageError` for unusable input.
        """
        return self.analyze_many([image], channels)[0]

    def analyze_many(self, images_: Sequence[images.ImageInput], channels: str = "bgr") -> list[list[Face]]:
        """Faces of every image; the faces of all images go through one batched, jitted predict.

        Raises `ImageError` for the first unusable image (use `analyze_each` to go on past it).
        """
        frames = [self.load(im, channels) for im in images_]
        return self.analyze_frames(frames)

    def analyze_each(self, images_: Sequence[images.ImageInput],
                     channels: str = "bgr") -> list[list[Face] | images.ImageError]:
        """Like `analyze_many`, but an unusable image yields its `ImageError` in its place."""
        return self.analyze_loaded(self.load_each(images_, channels))

    def load_each(self, images_: Sequence[images.ImageInput],
                  channels: str = "bgr") -> list[np.ndarray | images.ImageError]:
        """BGR pixels of every input, or the `ImageError` of each unusable one."""
        out: list[np.ndarray | images.ImageError] = []
        for im in images_:
            try:
                out.append(self.load(im, channels))
            except images.ImageError as e:
                out.append(e)
        return out

    def analyze_loaded(self, frames: Sequence[np.ndarray | images.ImageError]
                       ) -> list[list[Face] | images.ImageError]:
        """`analyze_frames` over the decoded entries of `load_each`; errors pass through."""
        results = iter(self.analyze_frames([f for f in frames if isinstance(f, np.ndarray)]))
        return [next(results) if isinstance(f, np.ndarray) else f for f in frames]

    def analyze_frames(self, frames: Sequence[np.ndarray], video: bool | Sequence[bool] = False) -> list[list[Face]]:
        """Faces of decoded BGR uint8 images (detected one by one, classified in one batch).
        Photos detect at full resolution up to `max_side`; `video` frames at the detector's
        own working width (its fast path, e.g. live camera frames); in both modes the detection
        copy's longer side is at most `max_side` (see `detection_width`)."""
        self.warmup()
        fast = [video] * len(frames) if isinstance(video, bool) else list(video)
        dets = [self._core.detect(f, self.detection_width(f, v)) for f, v in zip(frames, fast)]
        crops = [self._core.crops(f, d) for f, d in zip(frames, dets)]
        probs = self._core.classify(np.concatenate(crops) if crops else np.zeros((0, 48, 48), np.uint8))
        out, start = [], 0
        for d in dets:
            out.append(make_faces(d, probs[start:start + len(d)], self.class_names))
            start += len(d)
        return out

    def video(self, source: str | int | os.PathLike, max_frames: int | None = None,
              keep_frames: bool = False) -> Iterator[FrameFaces]:
        """Faces of every frame of a video file, webcam index, stream URL or image folder, with
        track ids (probabilities smoothed along each track when `smoothing`); `keep_frames`
        attaches each decoded BGR frame. Raises `SourceError` when the source cannot be opened."""
        from ferjax.realtime.capture import open_source  # noqa: PLC0415

        self.warmup()
        pipe = self.pipeline(tracking=True)
        with open_source(source) as src:
            for n, (index, frame) in enumerate(src):
                if max_frames is not None and n >= max_frames:
                    break
                result, _ = pipe.process(index, frame, draw=False)  # the stream's width, capped by max_side
                yield FrameFaces(index, result.faces(self.class_names), result.ms, frame if keep_frames else None)

    def draw(self, frame: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """A copy of a BGR frame with boxes, labels and landmarks drawn."""
        return draw_faces(frame, faces)


_default: Analyzer | None = None


def default_analyzer() -> Analyzer:
    """The Analyzer behind `analyze`: default detector and model, created on first use."""
    global _default
    if _default is None:
        _default = Analyzer()
    return _default


def analyze(image: images.ImageInput, channels: str = "bgr") -> list[Face]:
    """Faces in one photo with the default detector and model, kept loaded between calls."""
    return default_analyzer().analyze(image, channels)
