"""Jit throughput of registered classifiers: `python -m ferjax.bench`.

For each classifier, batch size and dtype, the predict function and the full train step (forward,
backward, optimizer update, batch-norm statistics) are compiled ahead of time (compile seconds
reported apart) and timed. Contenders run interleaved in one process: JAX on one XLA device, JAX
on the host CPU split into devices (what `ferjax.run` trains with), and, when PyTorch is
importable, its `channels_last` twin (and `torch.compile` of it), so every ratio compares
figures taken side by side. Each figure is the median over `--repeats` rounds of `--iters` calls.
The header gives the CPU model and the measured matmul rate per dtype; train rows give GFLOP/s
(XLA's count of the step's floating-point work) as a fraction of that rate.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

from absl import app, flags

from ferjax.jax_setup import split_host_cpu
from ferjax.nn import init_variables
from ferjax.timing import cpu_model, interleaved

flags.DEFINE_list("classifiers", ["vgg_small", "vgg13"], "Registered classifiers to measure ('all' for every one).")
flags.DEFINE_list("predict_batch_sizes", ["1", "32", "128"], "Batch sizes for predict.")
flags.DEFINE_list("train_batch_sizes", ["32", "128"], "Batch sizes for the train step.")
flags.DEFINE_list("dtypes", ["float32"], "Compute dtypes (float32, bfloat16); PyTorch uses autocast for bfloat16.")
flags.DEFINE_integer("repeats", 5, "Timed rounds (the median is reported; at least 3).")
flags.DEFINE_integer("iters", 3, "Calls per timed round.")
flags.DEFINE_integer("cpu_devices", 0, "Devices the host CPU is split into for the data-parallel "
                     "row (0: one per core, as `ferjax.run` trains; 1: no split row).")
flags.DEFINE_bool("torch", True, "Also time the PyTorch twin when PyTorch is installed.")
flags.DEFINE_bool("torch_compile", True, "Also time torch.compile of the twin (skipped with the "
                  "reason when it fails).")
flags.DEFINE_list("cyclegan", ["cpu", "paper"], "Profiles of cyclegan_neutral2disgust whose train step "
                  "is timed (images per second, compile apart); empty for none.")
flags.DEFINE_list("cyclegan_batch_sizes", [], "Batch sizes for the CycleGAN step (default: each "
                  "profile's own).")
flags.DEFINE_bool("input_pipeline", True, "Also measure the host input pipeline.")
flags.DEFINE_list("conv_grads", ["xla"], "Convolution gradients of the JAX train step: 'xla' and/or "
                  "'custom' (ferjax's hand-written Conv3x3 backward; classifiers with a conv_grad argument).")
flags.DEFINE_string("json_out", "", "Also write the rows as JSON to this file.")
flags.DEFINE_bool("augment", False, "Include on-device augmentation in the JAX train step (the "
                  "PyTorch twin has none, so leave it off for the side-by-side ratio).")
FLAGS = flags.FLAGS


def matmul_gflops(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """Measured GFLOP/s of one square n x n matmul in `dtype` on the default device."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a, b: a @ b).lower(a, a).compile()
    jax.block_until_ready(f(a, a))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(a, a))
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def input_pipeline_rate(batch: int, n_images: int = 28709, batches: int = 200) -> float:
    """Batches per second that the host input pipeline (TrainBatches) delivers, FER2013-sized."""
    import numpy as np

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


def _model(name: str, dtype: str, conv_grad: str = "xla"):
    from ferjax.registry import CLASSIFIERS

    kwargs = {} if dtype == "float32" else {"dtype": dtype}
    if conv_grad != "xla":
        kwargs["conv_grad"] = conv_grad
    return CLASSIFIERS.create_accepting(name, kwargs) if kwargs else CLASSIFIERS.create(name)


def jax_predict(name: str, batch: int, dtype: str) -> tuple[Callable, float, float]:
    """(call, compile seconds, FLOPs per image) of the jitted predict on one device."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    model = _model(name, dtype)
    variables = init_variables(model, jax.random.key(0), jnp.zeros((1, 48, 48, 1)))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (batch, 48, 48, 1)), jnp.float32)
    start = time.perf_counter()
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    return (lambda: compiled(variables, x)), compile_s, _flops(lowered) / batch


def jax_train(name: str, batch: int, dtype: str, devices: int,
              conv_grad: str = "xla") -> tuple[Callable, float, float]:
    """(call, compile seconds, FLOPs per image) of the ferjax train step over `devices` devices."""
    import jax
    import numpy as np

    from ferjax.config import load_experiment
    from ferjax.registry import LOSSES
    from ferjax.train import sharding
    from ferjax.train.classifier_steps import create_state, make_steps
    from ferjax.train.schedules import make_optimizer, make_schedule

    cfg = load_experiment("fer2013_vgg:cpu")
    if not FLAGS.augment:
        cfg.augment.update(crop_pad=0, flip=False, rotate_deg=0.0, jitter=0.0)
    model = _model(name, dtype, conv_grad)
    tx = make_optimizer(cfg.train, make_schedule(cfg.train, 100))
    loss = LOSSES.create("cross_entropy", num_classes=7, label_smoothing=0.1)
    mesh = sharding.data_mesh(devices)
    train, _ = make_steps(model, tx, loss, cfg.augment, 0, mesh)
    rng = np.random.default_rng(0)
    data = sharding.put_batch({"image": rng.integers(0, 255, (batch, 48, 48, 1)).astype(np.uint8),
                               "label": rng.integers(0, 7, batch).astype(np.int32)}, mesh)
    state = jax.device_put(create_state(model, tx, 0), sharding.replicated(mesh))
    step, compile_s, lowered = compiled_stepper(train, state, data)
    return step, compile_s, _flops(lowered) * devices / batch


def conv_grads(name: str) -> list[str]:
    """The `--conv_grads` that classifier `name` takes (every classifier has XLA's)."""
    from ferjax.registry import CLASSIFIERS

    accepted = CLASSIFIERS.accepted(name)
    takes = accepted is None or "conv_grad" in accepted
    return [g for g in FLAGS.conv_grads if g == "xla" or takes]


def compiled_stepper(train, state, data) -> tuple[Callable, float, Any]:
    """(call, compile seconds, lowered) for a donated train step fed the same batch each call."""
    start = time.perf_counter()
    lowered = train.lower(state, data)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], data)
        return metrics["loss"]

    return call, compile_s, lowered


def _flops(lowered) -> float:
    """XLA's FLOP count of a lowered computation (per device for a partitioned one). Counted before
    compilation: a GPU executable's cost analysis leaves out the convolutions it hands to cuDNN
    (the 2026-11-30 H200 run reported 0.02 GFLOP per vgg13 train image), the HLO before it does not."""
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def cyclegan_step(profile: str, batch: int | None = None) -> tuple[Callable, float, int, int]:
    """(call, compile seconds, batch, devices) of the CycleGAN train step of a profile of
    `cyclegan_neutral2disgust`, data parallel over the split CPU when the batch allows."""
    import jax
    import numpy as np

    from ferjax.data.fer2013 import class_index
    from ferjax.config import load_experiment
    from ferjax.registry import DISCRIMINATORS, GENERATORS, LOSSES
    from ferjax.train import sharding
    from ferjax.train.cyclegan_steps import create_state, make_step
    from ferjax.tasks.cyclegan import class_guide
    from ferjax.train.schedules import make_optimizer, make_schedule

    c = load_experiment(f"cyclegan_neutral2disgust:{profile}" if profile else "cyclegan_neutral2disgust")
    b = batch or c.train.batch_size
    gen = GENERATORS.create(c.generator, **c.generator_kwargs)
    disc = DISCRIMINATORS.create(c.discriminator, **c.discriminator_kwargs)
    tx = make_optimizer(c.train, make_schedule(c.train, 100))
    devices = jax.device_count() if b % jax.device_count() == 0 else 1
    mesh = sharding.data_mesh(devices)
    step = make_step(gen, disc, tx, tx, LOSSES.create(c.cycle_loss), LOSSES.create(c.identity_loss),
                     LOSSES.create(c.adversarial_loss), c.gan, 0, mesh, class_guide=class_guide(c),
                     target_class=class_index(c.target_class), steps_per_epoch=100)
    rng = np.random.default_rng(0)
    data = sharding.put_batch({k: rng.integers(0, 255, (b, 48, 48, 1)).astype(np.uint8) for k in "ab"}, mesh)
    state = jax.device_put(create_state(gen, disc, tx, tx, 0, c.gan.pool_size), sharding.replicated(mesh))
    call, compile_s, _ = compiled_stepper(step, state, data)
    return call, compile_s, b, devices


def torch_contenders(name: str, batch: int, train: bool, dtype: str) -> tuple[dict, list[str]]:
    """PyTorch contenders for one row (eager channels_last, and compiled) and notes on skips."""
    from ferjax.bench_torch import make_torch_call

    calls, notes = {}, []
    eager = make_torch_call(name, batch, train, dtype)
    if eager is None:
        return calls, notes
    calls["torch"] = eager
    if FLAGS.torch_compile:
        try:
            compiled = make_torch_call(name, batch, train, dtype, compile=True)
            compiled()
            calls["torch_compile"] = compiled
        except Exception as e:  # inductor needs a working C++ toolchain; say why it is missing
            notes.append(f"torch.compile skipped for {name}: {type(e).__name__}: {str(e)[:120]}")
    return calls, notes


def main(argv):
    del argv
    devices = split_host_cpu(FLAGS.cpu_devices or None)
    import jax

    from ferjax.registry import CLASSIFIERS

    names = CLASSIFIERS.names() if FLAGS.classifiers == ["all"] else FLAGS.classifiers
    devices = min(devices, jax.device_count())
    have_torch = False
    if FLAGS.torch:
        try:
            import torch

            have_torch = True
            torch_version = torch.__version__
        except ImportError:
            print("PyTorch not installed: JAX only (pip install torch to compare side by side)")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.machine()}; jax {jax.__version__} "
          f"({jax.default_backend()}, {jax.device_count()} devices)"
          + (f"; torch {torch_version}" if have_torch else ""))
    peak = {d: matmul_gflops(d) for d in FLAGS.dtypes}
    print("matmul 2048x2048 on one device: " + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in peak.items()))
    print(f"timing: median of {max(3, FLAGS.repeats)} interleaved rounds of {FLAGS.iters} calls; "
          f"'jax xN' = the host CPU split into N devices (data parallel, as ferjax.run trains)")
    rows, notes = [], []
    print("| classifier | mode | dtype | batch | runtime | compile s | img/s | GFLOP/s | of matmul peak | "
          "ratio to torch |\n| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |", flush=True)
    for name in names:
        for mode, sizes in (("predict", FLAGS.predict_batch_sizes), ("train", FLAGS.train_batch_sizes)):
            for dtype in FLAGS.dtypes:
                for b in (int(s) for s in sizes if s):
                    calls, compile_s, flops = {}, {}, 0.0
                    if mode == "predict":
                        calls["jax"], compile_s["jax"], flops = jax_predict(name, b, dtype)
                    else:
                        for grad in conv_grads(name):
                            tag = "" if grad == "xla" else f" {grad} conv grad"
                            key = f"jax{tag}"
                            calls[key], compile_s[key], flops = jax_train(name, b, dtype, 1, grad)
                            if devices > 1 and b % devices == 0:
                                key = f"jax x{devices}{tag}"
                                calls[key], compile_s[key], _ = jax_train(name, b, dtype, devices, grad)
                    if have_torch:
                        extra, why = torch_contenders(name, b, mode == "train", dtype)
                        calls.update(extra)
                        notes += [n for n in why if n not in notes]
                    secs = interleaved(calls, FLAGS.repeats, FLAGS.iters)
                    rate = {k: b / s for k, s in secs.items()}
                    for k, r in rate.items():
                        gflops = r * flops / 1e9
                        ratio = f"{r / rate['torch']:.2f}" if "torch" in rate else "-"
                        row = {"classifier": name, "mode": mode, "dtype": dtype, "batch": b, "runtime": k,
                               "compile_s": compile_s.get(k), "images_per_s": r, "gflops": gflops,
                               "fraction_of_matmul": gflops / peak[dtype], "ratio_to_torch": ratio}
                        rows.append(row)
                        c = f"{compile_s[k]:.2f}" if k in compile_s else "-"
                        print(f"| {name} | {mode} | {dtype} | {b} | {k} | {c} | {r:.1f} | {gflops:.0f} | "
                              f"{gflops / peak[dtype]:.2f} | {ratio} |", flush=True)
    for n in notes:
        print(n)
    if FLAGS.cyclegan:
        print("\n| CycleGAN profile | batch | devices | compile s | img/s (source images per second) |\n"
              "| --- | ---: | ---: | ---: | ---: |")
        for profile in FLAGS.cyclegan:
            for b in [int(x) for x in FLAGS.cyclegan_batch_sizes] or [None]:
                call, compile_s, b, nd = cyclegan_step(profile, b)
                sec = interleaved({"step": call}, FLAGS.repeats, FLAGS.iters)["step"]
                rows.append({"cyclegan": profile, "batch": b, "devices": nd, "compile_s": compile_s,
                             "images_per_s": b / sec})
                print(f"| {profile} | {b} | {nd} | {compile_s:.2f} | {b / sec:.1f} |", flush=True)
    if FLAGS.input_pipeline:
        for b in (int(s) for s in FLAGS.train_batch_sizes if s):
            rate = input_pipeline_rate(b)
            print(f"input pipeline, batch {b}: {rate:.0f} batches/s = {rate * b:.0f} images/s")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump({"cpu": cpu_model(), "matmul_gflops": peak, "rows": rows, "notes": notes}, f, indent=2)


def main_argv(argv: list[str]) -> int:
    """`ferjax bench ARGV`: the absl command above, returning its exit status."""
    if {"-h", "--help", "--helpshort"} & set(argv):
        print(f"usage: ferjax bench [--flag=value ...]\n\n{__doc__.strip()}\n\nflags:\n"
              f"{flags.FLAGS.module_help(sys.modules[__name__])}")
        return 0
    try:
        app.run(main, argv=["ferjax bench", *argv])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    app.run(main)
