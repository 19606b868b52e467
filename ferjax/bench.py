"""Jit throughput of registered classifiers: `python -m ferjax.bench`.

For each classifier and batch size, the predict function and the full train step (augment,
forward, backward, optimizer update) are compiled ahead of time (compile seconds reported apart)
and then timed: the median over `--repeats` runs of `--iters` calls, as images per second. When
PyTorch is importable (optional, never a dependency) the same architecture runs side by side in
PyTorch and the JAX/PyTorch ratio is printed.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ferjax.registry import CLASSIFIERS, LOSSES
from ferjax.train import sharding
from ferjax.train.classifier_steps import create_state, make_steps
from ferjax.train.schedules import make_optimizer, make_schedule

flags.DEFINE_list("classifiers", ["vgg_small", "vgg13"], "Registered classifiers to measure ('all' for every one).")
flags.DEFINE_list("predict_batch_sizes", ["1", "32", "128"], "Batch sizes for predict.")
flags.DEFINE_list("train_batch_sizes", ["32", "128"], "Batch sizes for the train step.")
flags.DEFINE_integer("repeats", 5, "Timed repeats (the median is reported).")
flags.DEFINE_integer("iters", 3, "Calls per timed repeat.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch twin when PyTorch is installed.")
flags.DEFINE_string("json_out", "", "Also write the rows as JSON to this file.")
flags.DEFINE_bool("augment", False, "Include on-device augmentation in the JAX train step (the "
                  "PyTorch twin has none, so leave it off for the side-by-side ratio).")
FLAGS = flags.FLAGS


def time_calls(fn: Callable[[], object], repeats: int, iters: int) -> float:
    """Median seconds per call over `repeats` runs of `iters` calls (after one warm call)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            out = fn()
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / iters)
    return statistics.median(times)


def input_pipeline_rate(batch: int, n_images: int = 28709, batches: int = 200) -> float:
    """Batches per second that the host input pipeline (TrainBatches) delivers, FER2013-sized."""
    from ferjax.data.pipeline import TrainBatches

    rng = np.random.default_rng(0)
    arrays = {"image": rng.integers(0, 255, (n_images, 48, 48, 1), dtype=np.uint8),
              "label": rng.integers(0, 7, n_images).astype(np.int32)}
    it = TrainBatches(arrays, batch, seed=0).iterate(0)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - start)


def jax_predict(name: str, batch: int, repeats: int, iters: int) -> dict:
    model = CLASSIFIERS.create(name)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)), train=False)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (batch, 48, 48, 1)), jnp.float32)
    start = time.perf_counter()
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
    compile_s = time.perf_counter() - start
    sec = time_calls(lambda: compiled(variables, x), repeats, iters)
    return {"compile_s": compile_s, "images_per_s": batch / sec}


def jax_train(name: str, batch: int, repeats: int, iters: int) -> dict:
    from ferjax.experiments.fer2013_vgg import get_config

    cfg = get_config("cpu")
    if not FLAGS.augment:
        cfg.augment.update(crop_pad=0, flip=False, rotate_deg=0.0, jitter=0.0)
    model = CLASSIFIERS.create(name)
    tx = make_optimizer(cfg.train, make_schedule(cfg.train, 100))
    loss = LOSSES.create("cross_entropy", num_classes=7, label_smoothing=0.1)
    mesh = sharding.data_mesh(1)
    train, _ = make_steps(model, tx, loss, cfg.augment, 0, mesh)
    rng = np.random.default_rng(0)
    data = sharding.put_batch({"image": rng.integers(0, 255, (batch, 48, 48, 1)).astype(np.uint8),
                               "label": rng.integers(0, 7, batch).astype(np.int32)}, mesh)
    state = jax.device_put(create_state(model, tx, 0), sharding.replicated(mesh))
    start = time.perf_counter()
    compiled = train.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], data)
        return metrics["loss"]

    sec = time_calls(step, repeats, iters)
    return {"compile_s": compile_s, "images_per_s": batch / sec}


def _vggface_twin(spec):
    """PyTorch twin of `vggface_fer` (or a `vggface` backbone): resize, grey -> RGB, mean, 13 convs, head."""
    import torch
    import torch.nn as tnn

    from ferjax.components.classifiers import VGGFACE_DEPTHS, VGGFACE_RGB_MEAN, VGGFaceFER

    fer = isinstance(spec, VGGFaceFER)
    layers, cin = [], 3
    for n, width in zip(VGGFACE_DEPTHS, spec.widths):
        for _ in range(n):
            layers += [tnn.Conv2d(cin, width, 3, padding=1), tnn.ReLU(inplace=True)]
            cin = width
        layers.append(tnn.MaxPool2d(2))
    side = spec.image_size // 32
    if fer:
        head = [tnn.Linear(cin * side * side, spec.hidden), tnn.ReLU(inplace=True), tnn.Dropout(spec.dropout),
                tnn.Linear(spec.hidden, spec.num_classes)]
    elif spec.include_top:
        head = [tnn.Linear(cin * side * side, spec.fc_width), tnn.ReLU(inplace=True), tnn.Dropout(spec.dropout),
                tnn.Linear(spec.fc_width, spec.fc_width), tnn.ReLU(inplace=True), tnn.Dropout(spec.dropout),
                tnn.Linear(spec.fc_width, spec.num_identities)]
    else:
        head = []
    mean = torch.tensor(VGGFACE_RGB_MEAN).view(1, 3, 1, 1)

    class Twin(tnn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = tnn.Sequential(*layers), tnn.Sequential(tnn.Flatten(), *head)

        def forward(self, x):  # x: [N,1,48,48] as given to every twin
            x = tnn.functional.interpolate(x, size=(spec.image_size,) * 2, mode="bilinear", align_corners=False)
            return self.head(self.body(x.expand(-1, 3, -1, -1) - mean))

    return Twin()


def torch_twin(name: str):
    """The PyTorch version of a VGGNet-family or VGG-Face classifier, or None."""
    import torch.nn as tnn

    from ferjax.components.classifiers import VGGFace, VGGFaceFER, VGGNet

    spec = CLASSIFIERS.create(name)
    if isinstance(spec, (VGGFace, VGGFaceFER)):
        return _vggface_twin(spec)
    if not isinstance(spec, VGGNet):
        return None
    layers, cin = [], 1
    for width in spec.widths:
        for _ in range(spec.convs_per_stage):
            layers += [tnn.Conv2d(cin, width, 3, padding=1, bias=False), tnn.BatchNorm2d(width),
                       tnn.ReLU(inplace=True)]
            cin = width
        layers.append(tnn.MaxPool2d(2))
    return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Dropout(spec.dropout),
                          tnn.Linear(cin, spec.hidden), tnn.ReLU(inplace=True),
                          tnn.Dropout(spec.dropout), tnn.Linear(spec.hidden, spec.num_classes))


def torch_rates(name: str, batch: int, train: bool, repeats: int, iters: int) -> float | None:
    import torch

    net = torch_twin(name)
    if net is None:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.randint(0, 255, (batch, 1, 48, 48)).float()
    y = torch.randint(0, 7, (batch,))
    if train:
        net.train()
        opt = torch.optim.AdamW(net.parameters(), 2e-3)
        lossf = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

        def call():
            opt.zero_grad(set_to_none=True)
            loss = lossf(net((x - 128) / 64), y)
            loss.backward()
            opt.step()
            return None
    else:
        net.eval()

        def call():
            with torch.inference_mode():
                net((x - 128) / 64)
            return None

    return batch / time_calls(call, repeats, iters)


def main(argv):
    del argv
    names = CLASSIFIERS.names() if FLAGS.classifiers == ["all"] else FLAGS.classifiers
    have_torch = False
    if FLAGS.torch:
        try:
            import torch  # noqa: F401

            have_torch = True
        except ImportError:
            print("PyTorch not installed: JAX only (pip install torch to compare side by side)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
          f"backend {jax.default_backend()} ({jax.devices()[0].device_kind})")
    rows = []
    header = "| classifier | mode | batch | compile s | JAX img/s | PyTorch img/s | JAX/PyTorch |"
    print(header + "\n| --- | --- | ---: | ---: | ---: | ---: | ---: |", flush=True)
    for name in names:
        for mode, sizes, fn in (("predict", FLAGS.predict_batch_sizes, jax_predict),
                                ("train", FLAGS.train_batch_sizes, jax_train)):
            for b in (int(s) for s in sizes if s):
                r = fn(name, b, FLAGS.repeats, FLAGS.iters)
                t = torch_rates(name, b, mode == "train", FLAGS.repeats, FLAGS.iters) if have_torch else None
                row = {"classifier": name, "mode": mode, "batch": b, **r, "torch_images_per_s": t}
                rows.append(row)
                ratio = f"{r['images_per_s'] / t:.2f}" if t else "-"
                print(f"| {name} | {mode} | {b} | {r['compile_s']:.2f} | {r['images_per_s']:.1f} | "
                      f"{f'{t:.1f}' if t else '-'} | {ratio} |", flush=True)
    for b in (int(s) for s in FLAGS.train_batch_sizes if s):
        rate = input_pipeline_rate(b)
        print(f"input pipeline, batch {b}: {rate:.0f} batches/s = {rate * b:.0f} images/s "
              f"(the train step needs far fewer, so it never waits on data)")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    app.run(main)
