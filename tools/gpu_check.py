"""A prepared GPU check: train the `:gpu` profile on FER2013 and benchmark, on an NVIDIA machine without network.

Here, with network (the ferjax development environment):

    python tools/gpu_check.py prepare [--fer2013_path PATH]

exports FER2013 with its FER+ votes as a compact array file (`.gpu_check/fer2013.npz.xz`, see
ferjax.data.compact), downloads Python 3.12 wheels of every ferjax dependency the GPU machine lacks
(plus setuptools/wheel, to build ferjax there), and splits them into two bundles of about equal
size, one per device call (a call carries at most 64 MiB with the working tree):
`.gpu_check/install` (the wheels and the data file's first part) and `.gpu_check/run` (its second part).

There, with the machine's own JAX (never replaced) and no network, two calls back to back:

    python3 tools/gpu_check.py install     # carry .gpu_check/install: installs into --site, checks imports
    python3 tools/gpu_check.py run         # carry .gpu_check/run: trains, evaluates, benchmarks

`install` keeps the first data part in --workdir; `run` joins the parts (checking their sha256),
installs first when `install` has not (wheels still present), refuses without a GPU visible to JAX
unless `--allow-cpu` (a dry run with tiny limits, here), limits the profile's epochs so that the
whole check fits the time budget (printing what it limited), prints the evaluation JSON and the
benchmark table, and writes logs and results to $OUT (or --out); `run --export NAME --no-bench` also
returns the trained model in parts that `python tools/gpu_check.py join --from DIR --to FILE`
puts back together here. Where a network exists,
`pip install '.[cuda13]'` and `python -m ferjax.run --config.data.fer2013_path=FILE.npz.xz` do
the same without this tool.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / ".gpu_check"
DEFAULT_SITE = Path(tempfile.gettempdir()) / "ferjax_gpu_site"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "ferjax_gpu_check"
MARKER = "ferjax_gpu_check_installed.json"
BUNDLE_LIMIT = 60 * 2 ** 20  # each bundle; a device call carries at most 64 MiB with the working tree
CALL_LIMIT = 64 * 2 ** 20
DATA_NAME = "fer2013.npz.xz"
PARTS_MANIFEST = "data_parts.json"
EXPORT_MANIFEST = "export_parts.json"  # an exported model's parts in $OUT, its card inside
RETURN_FILES, RETURN_BYTES = 8, 64 * 2 ** 20  # what a device call returns: 8 files, 16 MiB each, 64 MiB in all
RETURN_PART_BYTES = 15 * 2 ** 20  # an exported model's parts, each under the 16 MiB a returned file may have
TARGET_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
# The GPU machine's preinstalled Python packages (/work/.library/device/KINDS.md, image 'cuda', read
# 2026-11-17): used as they are, never carried. `run` also skips any carried wheel already installed.
PREINSTALLED = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split())
NEVER_CARRIED = re.compile(r"^(jax|jaxlib|jax-cuda.*|nvidia-.*|torch|tensorflow|numpy|chex)$")  # JAX's stack there
# GPU run: the :gpu profile's epochs cut so that install + data + compile + training + evaluation +
# benchmark stay within --budget_s on one H200 (measured 2026-11-30: 151 s; the whole 100-epoch profile
# took 235 s without the benchmark: BUILD.md section 4).
GPU_EPOCHS = 12
GPU_BENCH = ("--classifiers=vgg13 --dtypes=float32,bfloat16 --predict_batch_sizes=128 "
             "--train_batch_sizes=128 --repeats=3 --iters=10 --cyclegan= --input_pipeline=false "
             "--torch=false")  # ferjax.bench's PyTorch twin runs on the CPU only: no GPU ratio
CPU_DRY_RUN = ("--config.data.limit_per_split=256", "--config.train.epochs=1",
               "--config.train.batch_size=32", "--config.train.eval_batch_size=64")
CPU_BENCH = ("--classifiers=vgg_small --predict_batch_sizes=8 --train_batch_sizes=8 --repeats=3 "
             "--iters=1 --cyclegan= --input_pipeline=false --torch=false")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    """The normalized distribution name in a wheel's file name."""
    return normalize(path.name.split("-")[0])


def _marker_env(extra: str = "") -> dict:
    return {"python_version": TARGET_PYTHON, "python_full_version": f"{TARGET_PYTHON}.3",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "extra": extra}


def dependency_closure(root: str = "ferjax") -> dict[str, str]:
    """{normalized name: installed version} of every distribution `root` needs at run time on Linux
    and Python 3.12 (extras requested along the way followed), read from this environment."""
    from importlib import metadata

    from packaging.requirements import Requirement

    out: dict[str, str] = {}
    todo: list[tuple[str, frozenset]] = [(root, frozenset())]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras = todo.pop()
        if (normalize(name), extras) in seen:
            continue
        seen.add((normalize(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"error: {name} is needed by ferjax but not installed here; "
                             f"`pip install -e .` first") from None
        out[normalize(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate(_marker_env(e)) for e in ({""} | extras)):
                todo.append((req.name, frozenset(req.extras)))
    return out


def carried_requirements(closure: dict[str, str], build: Sequence[str]) -> list[str]:
    """Requirements to download: `name==version` pins of the closure less ferjax, the JAX/CUDA/torch
    stack and the GPU machine's preinstalled packages, then ferjax's build requirements as written
    (pyproject's build-system: setuptools, wheel), which build ferjax there offline."""
    pins = [f"{n}=={v}" for n, v in sorted(closure.items())
            if n != "ferjax" and n not in PREINSTALLED and not NEVER_CARRIED.match(n)]
    return pins + list(build)


def wheel_requirements(whl: Path) -> list:
    """The run-time requirements (packaging Requirements) a wheel's METADATA names for Linux and
    Python 3.12, extras left out."""
    import zipfile

    from packaging.requirements import Requirement

    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8").splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(_marker_env(""))]


def fallback_requirements(wheels: Sequence[Path], closure: dict[str, str]) -> list[str]:
    """Pins of preinstalled packages that carried wheels constrain (protobuf >= 6.33.5, say): carried
    too, and installed there only when the machine's version does not satisfy the constraint."""
    names = {normalize(r.name) for w in wheels for r in wheel_requirements(w) if str(r.specifier)}
    return [f"{n}=={closure[n]}" for n in sorted(names)
            if n in PREINSTALLED and n in closure and not NEVER_CARRIED.match(n)]


def download_wheels(pins: Sequence[str], wheels: Path, python_version: str, with_deps: Sequence[str] = ()) -> bool:
    """Downloads a Python `python_version` x86-64 wheel of each pin into `wheels` (the pins in
    `with_deps` with their dependencies); a pin with no wheel published (an sdist only, e.g.
    promise 2.3) is built here when it is pure Python. False, with the reason, on failure."""
    download = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "-q",
                "--python-version", python_version, "--implementation", "cp", "-d", str(wheels),
                *[a for p in PLATFORMS for a in ("--platform", p)]]
    for pin in pins:
        print(f"wheel: {pin}", flush=True)
        deps = [] if pin in with_deps else ["--no-deps"]
        if subprocess.run([*download, *deps, pin], capture_output=True).returncode == 0:
            continue
        before = set(wheels.glob("*.whl"))
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), pin],
                              capture_output=True, text=True)
        built = set(wheels.glob("*.whl")) - before
        if proc.returncode or not built or not all(w.name.endswith("-none-any.whl") for w in built):
            for w in built:
                w.unlink()
            print(f"error: no Python {python_version} x86-64 wheel of {pin}, and it does not build "
                  f"as a pure-Python wheel here:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return False
        print(f"  built {', '.join(w.name for w in built)} from its source distribution", flush=True)
    return True


def _build_requires() -> list[str]:
    import tomllib

    from packaging.requirements import Requirement

    with open(REPO / "pyproject.toml", "rb") as f:
        return [str(Requirement(r)) for r in tomllib.load(f)["build-system"]["requires"]]


def tree_bytes() -> int:
    """Bytes of what a device call sends besides carried paths: tracked and untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prepare(args: argparse.Namespace) -> int:
    """Exports the compact data, downloads the wheels, splits both into the two call bundles."""
    bundle = Path(args.bundle)
    first, second = bundle / "install", bundle / "run"
    wheels = first / "wheels"
    closure = dependency_closure()
    pins = carried_requirements(closure, _build_requires())
    for folder in (first, second):
        if folder.exists():
            shutil.rmtree(folder)
    wheels.mkdir(parents=True)
    second.mkdir(parents=True)
    # build requirements come with their own dependencies (wheel needs packaging): pip's build
    # isolation installs them from these wheels there
    if not download_wheels(pins, wheels, args.python_version, with_deps=_build_requires()):
        return 1
    fallback = fallback_requirements(sorted(wheels.glob("*.whl")), closure)
    if not download_wheels(fallback, wheels, args.python_version):
        return 1
    (wheels / "manifest.json").write_text(json.dumps({
        "python": args.python_version, "pins": pins, "fallback_if_too_old": fallback, "made": _now(),
        "commit": _git("rev-parse", "HEAD"), "preinstalled_not_carried": sorted(PREINSTALLED)}, indent=1))
    data_file = bundle / DATA_NAME
    if not data_file.is_file() or args.force_data:
        sys.path.insert(0, str(REPO))
        from ferjax.data import compact
        from ferjax.data import fer2013 as fer
        from ferjax.data.loading import resolve_source

        source = resolve_source(args.fer2013_path)
        print(f"exporting {source} to {data_file} (minutes)", flush=True)
        compact.write(data_file, fer.iter_records(source), source.name)
    # balance the calls: the install call carries the wheels and as much data as evens them out
    size, wheel_bytes = data_file.stat().st_size, folder_bytes(wheels)
    split_file(data_file, max(0, (size - wheel_bytes) // 2), first, second)
    tree = tree_bytes()
    ok = True
    for name, folder in (("install", first), ("run", second)):
        size = folder_bytes(folder)
        fits = size < BUNDLE_LIMIT and size + tree <= CALL_LIMIT
        ok &= fits
        print(f"call '{name}': carry {folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder} "
              f"{size / 2 ** 20:.1f} MiB; with the working tree ({tree / 2 ** 20:.1f} MiB) "
              f"{(size + tree) / 2 ** 20:.1f} MiB of the 64 MiB a call carries"
              + ("" if fits else "  <-- TOO LARGE"))
    return 0 if ok else 1


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_parts(path: Path, pieces: Sequence[tuple[Path, int, int]], manifest_name: str, **extra) -> dict:
    """Writes bytes [start, end) of `path` as `NAME.partK` into each piece's folder, and into every
    folder used a manifest `manifest_name` naming the parts and the whole file's sha256 (plus `extra`)."""
    data = path.read_bytes()
    manifest = {"file": path.name, "bytes": len(data), "sha256": _sha256(path), **extra, "parts": []}
    for i, (folder, start, end) in enumerate(pieces, 1):
        chunk, name = data[start:end], f"{path.name}.part{i}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(chunk)
        manifest["parts"].append({"name": name, "bytes": len(chunk),
                                  "sha256": hashlib.sha256(chunk).hexdigest()})
    for folder in dict.fromkeys(folder for folder, _, _ in pieces):
        (folder / manifest_name).write_text(json.dumps(manifest, indent=1))
    return manifest


def split_file(path: Path, first_bytes: int, first: Path, second: Path) -> dict:
    """Splits `path` into `NAME.part1` (its first `first_bytes` bytes) in `first` and `NAME.part2`
    in `second`, each folder with a manifest naming both parts and the whole file's sha256."""
    size = path.stat().st_size
    return _write_parts(path, [(first, 0, first_bytes), (second, first_bytes, size)], PARTS_MANIFEST)


def split_for_return(path: Path, folder: Path, card: dict, max_bytes: int = RETURN_PART_BYTES) -> dict:
    """Splits an exported model into `NAME.partK` files of at most `max_bytes` in `folder` (what a
    device call can return), with EXPORT_MANIFEST holding the parts' and the whole file's sha256 and
    the model card `card`; `join` puts them back together here."""
    starts = range(0, max(path.stat().st_size, 1), max_bytes)
    return _write_parts(path, [(folder, s, s + max_bytes) for s in starts], EXPORT_MANIFEST, card=card)


def join_parts(folders: Sequence[Path], out: Path, manifest_name: str = PARTS_MANIFEST) -> Path:
    """Joins the parts found in `folders` (first match of each) into `out`, checking every part's
    and the whole file's sha256 against the manifest `manifest_name`; errors name what is missing."""
    data_parts = manifest_name == PARTS_MANIFEST  # the carried data; otherwise a returned export
    manifests = [f / manifest_name for f in folders if (f / manifest_name).is_file()]
    if not manifests:
        raise FileNotFoundError(f"no {manifest_name} in {', '.join(map(str, folders))}: carry "
                                f".gpu_check/run in this call (made by `python tools/gpu_check.py prepare`)"
                                if data_parts else
                                f"no {manifest_name} in {', '.join(map(str, folders))}: point --from at the "
                                f"files a `run --export NAME` call returned")
    manifest = json.loads(manifests[0].read_text())
    if out.is_file() and out.stat().st_size == manifest["bytes"] and _sha256(out) == manifest["sha256"]:
        return out
    again = "run prepare again and carry both parts" if data_parts else "fetch the call's files again"
    chunks = []
    for part in manifest["parts"]:
        found = [f / part["name"] for f in folders if (f / part["name"]).is_file()]
        if not found:
            raise FileNotFoundError(
                f"data part {part['name']} not found in {', '.join(map(str, folders))}. Part 1 comes with "
                f"the install call (carry .gpu_check/install), part 2 with the run call (carry "
                f".gpu_check/run); make them back to back, as the machine stays warm only ~30 s"
                if data_parts else f"part {part['name']} not found in {', '.join(map(str, folders))}")
        chunk = found[0].read_bytes()
        if len(chunk) != part["bytes"] or hashlib.sha256(chunk).hexdigest() != part["sha256"]:
            raise ValueError(f"{found[0]}: {len(chunk)} bytes, not the {part['bytes']} with the sha256 "
                             f"that {manifest_name} names; {again}")
        chunks.append(chunk)
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise ValueError(f"the joined parts do not give {manifest['file']} (sha256 differs); {again}: "
                         f"the parts come from two different runs")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def source_digest() -> str:
    """A digest of the ferjax sources that `install` builds (to notice a changed tree)."""
    h = hashlib.sha256()
    for top in _package_dirs():
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    h.update((REPO / "pyproject.toml").read_bytes())
    return h.hexdigest()[:16]


def _package_dirs() -> list[str]:
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"].values()
    return sorted({d.split("/")[0] for d in dirs})


def _installed_elsewhere(site: Path) -> dict[str, str]:
    """{normalized name: version} of distributions this interpreter has outside `site`."""
    from importlib import metadata

    paths = [p for p in sys.path if p and Path(p).resolve() != site.resolve()]
    return {normalize(d.metadata["Name"]): d.version for d in metadata.distributions(path=paths)
            if d.metadata["Name"]}


def choose_wheels(carried: Sequence[Path], have: dict[str, str], requires: Sequence) -> tuple[list[Path], list[str]]:
    """The carried wheels to install: each one the machine lacks, and each one whose installed
    version fails a constraint of ferjax (`requires`) or of the wheels installed; (wheels, notes)."""
    from packaging.specifiers import SpecifierSet

    missing = [w for w in carried if wheel_name(w) not in have]
    specs: dict[str, SpecifierSet] = {}
    for req in [*requires, *(r for w in missing for r in wheel_requirements(w))]:
        specs[normalize(req.name)] = specs.get(normalize(req.name), SpecifierSet()) & req.specifier
    chosen, notes = list(missing), []
    for whl in carried:
        name = wheel_name(whl)
        if name not in have:
            continue
        spec = specs.get(name, SpecifierSet())
        if spec.contains(have[name], prereleases=True):
            notes.append(f"using the installed {name} {have[name]} (carried: {whl.name})")
        else:
            notes.append(f"the installed {name} {have[name]} does not satisfy '{spec}': ferjax's processes "
                         f"use the carried {whl.name} (the machine's own stays installed)")
            chosen.append(whl)
    return chosen, notes


def _staged_source(dest: Path) -> Path:
    """A copy of what building ferjax reads (pyproject, README, package folders), so the build
    writes nothing into the checkout."""
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        readme = tomllib.load(f)["project"].get("readme", "README.md")
    for name in ["pyproject.toml", readme, "LICENSE"]:
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dest / name)
    for top in _package_dirs():
        shutil.copytree(REPO / top, dest / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def install(args: argparse.Namespace, log) -> int:
    """Installs ferjax and the carried wheels the machine lacks into `--site`, then checks imports."""
    site, wheels = Path(args.site), Path(args.bundle) / "install" / "wheels"
    carried = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not carried:
        log(f"error: no wheels in {wheels}. Carry .gpu_check/install in this call (made here by "
            f"`python tools/gpu_check.py prepare`)")
        return 2
    stage = Path(args.workdir) / "parts"  # the data part this call carries, kept for the run call
    stage.mkdir(parents=True, exist_ok=True)
    for item in (Path(args.bundle) / "install").glob(f"{DATA_NAME}.part*"):
        shutil.copy2(item, stage / item.name)
    if (Path(args.bundle) / "install" / PARTS_MANIFEST).is_file():
        shutil.copy2(Path(args.bundle) / "install" / PARTS_MANIFEST, stage / PARTS_MANIFEST)
    from packaging.requirements import Requirement

    import tomllib

    build = {normalize(Requirement(r).name) for r in _build_requires()}  # used by pip's build isolation
    with open(REPO / "pyproject.toml", "rb") as f:
        ferjax_requires = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
    runtime, notes = choose_wheels([w for w in carried if wheel_name(w) not in build],
                                   _installed_elsewhere(site), ferjax_requires)
    for note in notes:
        log(note)
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        src = _staged_source(Path(tmp))
        # build isolation takes setuptools/wheel from the carried wheels; --no-deps: nothing is
        # resolved against (or replaces) the machine's own packages; --target: all lands in `site`
        cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--no-index", "--find-links", str(wheels),
               "--no-deps", "--no-cache-dir", "--no-compile", "--disable-pip-version-check",
               "--target", str(site), *map(str, runtime), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    log(proc.stdout[-4000:] + proc.stderr[-4000:])
    if proc.returncode:
        log(f"error: pip install failed ({proc.returncode}); see above")
        return 1
    log(f"installed {len(runtime)} wheels and ferjax into {site} in {time.perf_counter() - start:.1f} s")
    check = _py(site, "import json, importlib.metadata as m, ferjax, jax, flax, optax, orbax.checkpoint, "
                      "tensorflow_datasets, grain, dm_pix, ml_collections, tensorboardX, ferjax.run, "
                      "ferjax.data.compact\nfrom ferjax import registry\nregistry.load_components()\n"
                      "print(json.dumps({k: m.version(k) for k in ('jax', 'jaxlib', 'flax', 'optax', "
                      "'orbax-checkpoint', 'numpy', 'tensorflow-datasets', 'grain', 'ferjax')} "
                      "| {'ferjax_at': ferjax.__file__}))")
    log("import check: " + (check.stdout.strip() or check.stderr.strip()[-3000:]))
    if check.returncode:
        log("error: the installed packages do not import; see above")
        return 1
    listing = subprocess.run([sys.executable, "-m", "ferjax.run", "--list"], capture_output=True,
                             text=True, env=_env(site), cwd=site)
    if listing.returncode:
        log(f"error: `python -m ferjax.run --list` failed:\n{listing.stderr[-3000:]}")
        return 1
    (site / MARKER).write_text(json.dumps({"source": source_digest(), "wheels": [w.name for w in runtime],
                                           "versions": json.loads(check.stdout), "when": _now()}))
    return 0


def _env(site: Path, **extra: str) -> dict:
    """The children's environment: `site` first on the path. They also run in `site` (cwd), so
    that the checkout's own ferjax/ folder (no ferjax.components there) is not imported instead."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def _py(site: Path, code: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(site, **extra), cwd=site)


def jax_backend(site: Path) -> dict:
    """JAX's backend and devices as the installed ferjax will see them (in a child process)."""
    proc = _py(site, "import json, jax; print(json.dumps({'backend': jax.default_backend(), "
                     "'devices': [str(d) for d in jax.devices()], 'jax': jax.__version__}))")
    if proc.returncode:
        return {"backend": "none", "devices": [], "error": proc.stderr.strip()[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def config_values(site: Path, experiment: str, keys: Sequence[str]) -> dict:
    """Values of dotted config `keys` of `experiment` before the check's overrides."""
    code = ("import json, sys\nfrom ferjax import config\nc = config.build(sys.argv[1], [])\nout = {}\n"
            "for key in sys.argv[2:]:\n    value = c\n    for part in key.split('.'):\n"
            "        value = value.get(part) if hasattr(value, 'get') else None\n"
            "    out[key] = value\nprint(json.dumps(out, default=str))")
    proc = subprocess.run([sys.executable, "-c", code, experiment, *keys], capture_output=True, text=True,
                          env=_env(site), cwd=site)
    if proc.returncode:
        raise RuntimeError(f"experiment {experiment!r} does not build: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _field(override: str) -> str:
    """The dotted config field of a `--config.FIELD=VALUE` override."""
    return override.split("=")[0][len("--config."):]


def run_limited(cmd: list[str], env: dict, log_path: Path, timeout: float,
                cwd: Path | None = None) -> tuple[int | None, str]:
    """Runs `cmd`, its output to `log_path`; past `timeout` it gets SIGTERM (ferjax checkpoints and
    stops), then SIGKILL 60 s later. Returns (exit code or None on timeout, stdout)."""
    with open(log_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=cwd)
        try:
            out, _ = proc.communicate(timeout=max(1.0, timeout))
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            return None, out


def last_json(text: str) -> dict | None:
    """The last line of `text` that is a JSON object."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def run(args: argparse.Namespace) -> int:
    """Trains the profile on the compact data, evaluates, benchmarks; writes results to --out."""
    t0 = time.perf_counter()
    out, site = Path(args.out).resolve(), Path(args.site).resolve()  # children run in `site`
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"experiment": args.experiment, "started": _now(), "commit": _git("rev-parse", "HEAD"),
                    "phases_s": {}}
    logfile = open(out / "gpu_check.log", "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logfile.write(msg + "\n")
        logfile.flush()

    def finish(code: int, why: str = "") -> int:
        result.update(ok=code == 0, error=why or None, wall_s=round(time.perf_counter() - t0, 1))
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
        done = "trained, evaluated" + (", benchmarked" if args.bench else "")
        log(f"GPU CHECK {'OK' if code == 0 else 'FAILED'}: {why or done}; "
            f"wall {result['wall_s']:.1f} s (budget {args.budget_s:.0f} s) -> {out}")
        return code

    bundle, work = Path(args.bundle), Path(args.workdir).resolve()
    if args.data:
        data = Path(args.data).resolve()
        if not data.is_file():
            return finish(2, f"no compact FER2013 file at {data}")
    else:
        try:
            data = join_parts([bundle / "run", bundle / "install", work / "parts"], work / DATA_NAME)
        except (FileNotFoundError, ValueError) as e:
            return finish(2, str(e))
    log(f"data: {data} ({data.stat().st_size / 2 ** 20:.1f} MiB)")
    marker = site / MARKER
    fresh = marker.is_file() and json.loads(marker.read_text()).get("source") == source_digest()
    if not fresh:
        why = "not installed yet" if not marker.is_file() else "the ferjax sources changed since"
        if not (bundle / "install" / "wheels").is_dir():
            return finish(2, f"ferjax is {why} in {site} and no wheels are here to install it: run "
                             f"`python3 tools/gpu_check.py install` carrying .gpu_check/install right "
                             f"before this call (a device machine stays warm only about 30 s)")
        log(f"ferjax is {why} in {site}: installing from {bundle / 'install' / 'wheels'}")
        start = time.perf_counter()
        if install(args, log):
            return finish(1, "install failed")
        result["phases_s"]["install"] = round(time.perf_counter() - start, 1)
    result["installed"] = json.loads(marker.read_text())
    backend = jax_backend(site)
    result["jax"] = backend
    log(f"JAX {backend.get('jax')}: backend {backend['backend']}, devices {backend['devices']}")
    on_gpu = backend["backend"] == "gpu"
    if not on_gpu and not args.allow_cpu:
        return finish(2, f"no GPU visible to JAX (backend {backend['backend']}"
                         f"{': ' + backend['error'] if 'error' in backend else ''}). Run this on the "
                         f"NVIDIA machine, or pass --allow-cpu for a dry run with tiny limits")
    limits = ([f"--config.train.epochs={args.epochs}", "--config.train.checkpoint_every_steps=100000"]
              if on_gpu else list(CPU_DRY_RUN))  # checkpoints at epoch ends only
    if args.max_steps:
        limits.append(f"--config.train.max_steps={args.max_steps}")
    if args.export:
        if args.bench:
            return finish(2, "--export NAME returns the model in parts, and a device call returns at most "
                             "8 files: add --no-bench (run the benchmark in a call of its own)")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", args.export):
            return finish(2, f"--export {args.export!r}: expected a model name of letters, digits, "
                             f"'_', '.' and '-' (it names the returned files)")
        limits += [f"--config.export_to={work / 'export' / (args.export + '.msgpack')}",
                   f"--config.export_name={args.export}"]
    for item in args.set:
        if "=" not in item or not item.split("=", 1)[0].strip():
            return finish(2, f"--set {item!r}: expected KEY=VALUE, a config field of {args.experiment} "
                             f"(e.g. --set classifier=vgg_small)")
        limits.append(f"--config.{item}")
    try:
        before = config_values(site, args.experiment, [_field(a) for a in limits])
    except RuntimeError as e:
        return finish(2, str(e))
    if not on_gpu:  # the dry run's tiny limits where the experiment has those fields (a CycleGAN has no eval batch)
        limits = [a for a in limits if a not in CPU_DRY_RUN or before.get(_field(a)) is not None]
    log("limited: " + ", ".join(f"{a[len('--config.'):]} (profile: {before.get(_field(a), '?')})"
                                for a in limits)
        + ("" if on_gpu else "  [CPU dry run]"))
    result["limits"] = {"overrides": limits, "profile_values": before}
    tfds_dir = work / "tfds"
    workdir = work / "run"
    if workdir.exists():
        shutil.rmtree(workdir)
    cmd = [sys.executable, "-m", "ferjax.run", f"--experiment={args.experiment}", f"--workdir={workdir}",
           f"--config.data.fer2013_path={data}", f"--config.data.tfds_data_dir={tfds_dir}", *limits]
    log("train: " + " ".join(cmd[1:]))
    start = time.perf_counter()
    bench_reserve = args.bench_reserve_s if args.bench else 0
    code, stdout = run_limited(cmd, _env(site), out / "train.log",
                               args.budget_s - bench_reserve - (time.perf_counter() - t0), cwd=site)
    result["phases_s"]["train_and_evaluate"] = round(time.perf_counter() - start, 1)
    summary = last_json(stdout)
    with open(out / "train.log", "a") as f:
        f.write("\n--- stdout ---\n" + stdout)
    if code is None:
        return finish(1, f"training passed its time limit (budget {args.budget_s:.0f} s less "
                         f"{bench_reserve:.0f} s for the benchmark); lower --epochs (train.log)")
    if code != 0 or summary is None:
        tail = "\n".join((out / "train.log").read_text().splitlines()[-25:])
        log(tail)
        return finish(1, f"training exited with {code} (train.log)")
    result["evaluation"] = summary
    (out / "eval.json").write_text(json.dumps(summary, indent=2, default=str))
    log("EVALUATION " + json.dumps(summary, default=str))
    test = summary.get("test_report")
    if test:  # a classifier (a CycleGAN reports its quality in the EVALUATION line instead)
        log(f"test (PrivateTest): accuracy {test.get('accuracy')}, balanced accuracy "
            f"{test.get('balanced_accuracy')}, n {test.get('n')}; {summary.get('epochs_run')} epochs, "
            f"training {summary.get('wall_seconds')} s")
    if args.export:  # the weights in parts of at most 15 MiB, the card inside the manifest
        exported = Path(summary.get("exported") or "")
        if not exported.is_file():
            return finish(1, f"--export {args.export}: the training wrote no model (summary: "
                             f"exported={summary.get('exported')!r}); train.log")
        card_file = exported.with_suffix(".json")
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        manifest = split_for_return(exported, out, card, RETURN_PART_BYTES)
        result["export"] = {k: v for k, v in manifest.items() if k != "card"}
        files = [p for p in out.iterdir() if p.is_file()] + [out / "gpu_check.json"]  # written at finish
        if len(set(files)) > RETURN_FILES or sum(p.stat().st_size for p in files if p.is_file()) > RETURN_BYTES:
            return finish(1, f"--export {args.export}: {manifest['bytes'] / 2 ** 20:.1f} MiB in "
                             f"{len(manifest['parts'])} parts makes {len(set(files))} files in {out}, more "
                             f"than a device call returns ({RETURN_FILES} files, {RETURN_BYTES // 2 ** 20} MiB): "
                             f"export a smaller model")
        log(f"export: {exported.name} ({manifest['bytes'] / 2 ** 20:.1f} MiB) in {len(manifest['parts'])} "
            f"parts + {EXPORT_MANIFEST} in {out}; here: python tools/gpu_check.py join --from DIR "
            f"--to ferjax/pretrained/{exported.name}")
    else:
        for name in ("confusion_test.png", "curves.png"):  # $OUT returns at most RETURN_FILES files
            if (workdir / name).is_file():
                shutil.copy2(workdir / name, out / name)
    if args.bench:
        flags = (args.bench_flags or (GPU_BENCH if on_gpu else CPU_BENCH)).split()
        cmd = [sys.executable, "-m", "ferjax.bench", *flags, f"--json_out={out / 'bench.json'}"]
        log("bench: " + " ".join(cmd[1:]))
        start = time.perf_counter()
        code, stdout = run_limited(cmd, _env(site), out / "bench.log",
                                   max(30.0, args.budget_s - (time.perf_counter() - t0)), cwd=site)
        result["phases_s"]["bench"] = round(time.perf_counter() - start, 1)
        with open(out / "bench.log", "a") as f:
            f.write("\n--- stdout ---\n" + stdout)
        log(stdout.rstrip())
        if code != 0:
            return finish(1, "the benchmark " + ("passed its time limit" if code is None else
                                                 f"exited with {code}") + " (bench.log)")
    over = time.perf_counter() - t0 > args.budget_s
    return finish(0, "over the time budget" if over else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pre = sub.add_parser("prepare", help="here, with network: download wheels, export the compact data")
    pre.add_argument("--fer2013_path", default=None, help="FER2013 CSV/folder (default: $FER2013_PATH)")
    pre.add_argument("--python_version", default=TARGET_PYTHON, help="the GPU machine's Python")
    pre.add_argument("--force_data", action="store_true", help="export the data again")
    for s in (pre, *(sub.add_parser(n, help=h) for n, h in (
            ("install", "there: install the carried wheels and ferjax into --site, check imports"),
            ("run", "there: train the profile, evaluate, benchmark (installs first if needed)")))):
        s.add_argument("--bundle", default=str(BUNDLE), help="folder holding install/ and run/")
        if s is pre:
            continue
        s.add_argument("--site", default=str(DEFAULT_SITE), help="where the carried packages are installed")
        s.add_argument("--out", default=os.environ.get("OUT") or str(DEFAULT_WORK / "out"),
                       help="results folder (default $OUT)")
        s.add_argument("--workdir", default=str(DEFAULT_WORK), help="data parts, training and TFDS folders")
    r = sub.choices["run"]
    r.add_argument("--experiment", default="fer2013_vgg:gpu")
    r.add_argument("--data", default="", help="a compact FER2013 file (default: the carried parts, joined)")
    r.add_argument("--epochs", type=_positive_int, default=GPU_EPOCHS, help="train.epochs on a GPU")
    r.add_argument("--max_steps", type=_positive_int, default=0, help="train.max_steps (0: no cap)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another config override of the training, repeatable (e.g. classifier=vgg_small, "
                        "export_to=/tmp/model.msgpack)")
    r.add_argument("--budget_s", type=float, default=285.0, help="wall-time target of the whole run")
    r.add_argument("--bench_reserve_s", type=float, default=90.0, help="kept for the benchmark")
    r.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True)
    r.add_argument("--bench_flags", default="", help="ferjax.bench flags (default: a GPU or CPU set)")
    r.add_argument("--allow-cpu", "--allow_cpu", dest="allow_cpu", action="store_true",
                   help="dry run without a GPU, with tiny limits")
    r.add_argument("--export", default="", metavar="NAME",
                   help="export the trained model as NAME and return it in parts (with --no-bench)")
    j = sub.add_parser("join", help="here: join the parts a `run --export NAME` call returned")
    j.add_argument("--from", dest="src", required=True, help="folder holding the returned files")
    j.add_argument("--to", dest="dest", required=True, help="the model file to write (its card beside it)")
    return p


def join_export(src: Path, dest: Path) -> int:
    """Writes the model a `run --export` call returned in parts to `dest` and its card beside it."""
    try:
        join_parts([src], dest, EXPORT_MANIFEST)
    except (FileNotFoundError, ValueError) as e:
        print(f"join: {e}", file=sys.stderr)
        return 2
    card = json.loads((src / EXPORT_MANIFEST).read_text()).get("card") or {}
    if card:
        dest.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"joined {dest} ({dest.stat().st_size / 2 ** 20:.1f} MiB, sha256 checked)"
          + (f" and its card {dest.with_suffix('.json')}" if card else " (no card came with it)"))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "prepare":
        return prepare(args)
    if args.cmd == "join":
        return join_export(Path(args.src), Path(args.dest))
    if args.cmd == "install":
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / "install.log", "w") as f:
            def log(msg: str) -> None:
                print(msg, flush=True)
                f.write(msg + "\n")
            code = install(args, log)
            backend = jax_backend(Path(args.site)) if code == 0 else {}
            if backend:
                log(f"JAX {backend.get('jax')}: backend {backend['backend']}, devices {backend['devices']}")
            log("INSTALL " + ("OK" if code == 0 else "FAILED"))
            return code
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
