"""The paper's headline reproduced (`reproduce_paper`): its pipeline end to end, scored under its
own protocol beside the honest ones, and decomposed row by row.

Stages (ferjax.tasks.stages: cached by config and input content, resumable), over the pool of
FER2013 Training + PublicTest; PrivateTest enters none of them and is only predicted:
  pool      the pool's images, labels and CSV rows
  curate    the paper's removals: curate_fer2013's removal signals (`curation_signals`)
  relabel   curate_fer2013's k-fold CNNs and confident learning on every image left (`kfold`, `relabel`)
  generate  generated images topping up each generator's target class, translated from the
            relabelled set (`generator_checkpoint`, `more_generators`, `generate`)
  split R   per row R, a seeded random 80/20 of its modified set (ferjax.data.paper_split)
  train R   per row and seed, the row's recipe on the 80% (checkpoints picked on a held-out part of
            it), then predictions on PrivateTest (the 20% is the run's test split)
Rows: a (the pool), b (less removals), c (relabelled, less confident learning's removals), d (c plus
generated images), e (d's data and split, the paper's VGG-Face recipe). Scores and the report:
`reproduce_report`.
"""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import ml_collections
import numpy as np

from ferjax import config as cfg_lib
from ferjax.atomic import atomic_write_bytes, save_npz
from ferjax.data import paper_split
from ferjax.data.fer2013 import EMOTIONS, class_index
from ferjax.tasks.stages import Stages, arrays_digest, cached_line, digest, done_line
from ferjax.tasks.studies import reproduce_report

ROWS = ("a", "b", "c", "d", "e")
NEEDS = {"a": (), "b": ("curate",), "c": ("curate", "relabel"), "d": ("curate", "relabel", "generate"),
         "e": ("curate", "relabel", "generate")}
SPLIT_OF = {"a": "a", "b": "b", "c": "c", "d": "d", "e": "d"}  # row e trains on row d's split
LOCATION_FIELDS = ("data.", "reproduce_command", "export_")  # recipe fields that change no classifier


def requested_rows(config: ml_collections.ConfigDict) -> list[str]:
    """The configured rows in decomposition order."""
    names = {n.strip() for n in config.rows.split(",") if n.strip()}
    return [r for r in ROWS if r in names]


def _row_recipe(config: ml_collections.ConfigDict, row: str, seed: int) -> ml_collections.ConfigDict:
    """The classifier config of `row` and `seed`: trained on data the task passes (no dataset),
    its test split the row's 20% (protocol `paper`)."""
    recipe, overrides = (config.paper_recipe, config.paper_recipe_overrides) if row == "e" else \
        (config.recipe, config.recipe_overrides)
    field = "paper_recipe" if row == "e" else "recipe"
    try:
        return cfg_lib.build(recipe, [*overrides, "dataset=", "protocol=paper", f"train.seed={seed}"])
    except (cfg_lib.ConfigError, KeyError) as e:
        raise ValueError(f"--config.{field}={recipe!r} with its overrides: {e}") from None


def _check_row_e(config: ml_collections.ConfigDict) -> None:
    """Row e (the paper's VGG-Face recipe at 224x224) runs only on an accelerator with converted
    VGG-Face weights; refused before any work otherwise."""
    from ferjax.jax_setup import accelerator_present  # noqa: PLC0415

    has, why = accelerator_present()
    if not has:
        raise ValueError(f"row e (the paper's VGG-Face recipe, {config.paper_recipe}) needs a GPU or TPU and "
                         f"JAX finds none ({why}); leave it out (--config.rows=a,b,c,d, the :cpu profile) or run "
                         f"on an accelerator")
    backbone = _row_recipe(config, "e", 0).get("backbone_weights")
    if backbone is not None and not (backbone and Path(backbone).expanduser().is_file()):
        raise ValueError(f"row e needs converted VGG-Face weights: backbone_weights={backbone!r} is not a file. "
                         f"Convert them with `python -m ferjax.convert` and pass "
                         f"--config.paper_recipe_overrides=\"('backbone_weights=PATH',)\"")


def _paper_backbone(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`paper_recipe_overrides` with the converted `vggface` weights as backbone when none is named."""
    if any(o.startswith("backbone_weights=") for o in config.paper_recipe_overrides):
        return config
    from ferjax.registry import PRETRAINED  # noqa: PLC0415

    weights = PRETRAINED.get("vggface")().weights if "vggface" in PRETRAINED else None
    if weights is not None and Path(weights).is_file():
        config = ml_collections.ConfigDict(config.to_dict())
        config.paper_recipe_overrides = (*config.paper_recipe_overrides, f"backbone_weights={weights}")
    return config


def _generators(config: ml_collections.ConfigDict) -> list[tuple[Path, dict, str]]:
    """(folder, generator.json, weights digest) of every configured generator, checked."""
    from ferjax.atomic import file_sha256  # noqa: PLC0415
    from ferjax.train.generator_export import META, WEIGHTS, read_meta, resolve_generator  # noqa: PLC0415

    values = [("generator_checkpoint", config.generator_checkpoint)]
    values += [("more_generators", v.strip()) for v in config.more_generators.split(",") if v.strip()]
    out, pairs = [], set()
    for field, value in values:
        folder = resolve_generator(value, field)
        meta = read_meta(folder)
        pair = (meta["source_class"], meta["target_class"])
        if pair in pairs:
            raise ValueError(f"--config.{field}={value!r} translates {pair[0]} -> {pair[1]} like an earlier "
                             f"generator; give each class pair once")
        if meta["image_size"] != 48:
            raise ValueError(f"--config.{field}={value!r} takes {meta['image_size']} px images; FER2013's are 48")
        pairs.add(pair)
        out.append((folder, meta, file_sha256(folder / WEIGHTS) + file_sha256(folder / META)[:16]))
    return out


def _check(config: ml_collections.ConfigDict, rows: list[str]) -> dict:
    """Everything the run needs, checked before any data is read."""
    from ferjax.curation.relabel import check_settings, require_cleanlab  # noqa: PLC0415
    from ferjax.tasks.curate import kfold_recipe  # noqa: PLC0415

    if not rows:
        raise ValueError(f"--config.rows={config.rows!r}: name at least one of {', '.join(ROWS)}")
    needs = {s for r in rows for s in NEEDS[r]}
    if "relabel" in needs and config.kfold.folds:
        if importlib.util.find_spec("cleanlab") is None:  # importing it takes seconds: only when absent
            require_cleanlab()
        kfold_recipe(config.kfold)
        check_settings(config.relabel.filter_by, config.relabel.min_prob, config.relabel.unconfident)
    if "e" in rows:
        _check_row_e(config)
    for row in rows:
        _row_recipe(config, row, 0)
    return {"generators": _generators(config) if "generate" in needs else [], "needs": needs}


# ------------------------------------------------------------------------------------------- stages
def _load(config: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """(pool, PrivateTest): FER2013 Training + PublicTest with a `usage` code (0, 1), and the test split."""
    from ferjax.registry import DATASETS  # noqa: PLC0415

    splits = DATASETS.create("fer2013", cfg=config.data, protocol="original")
    train, public = splits["train"], splits["validation"]
    keys = [k for k in ("image", "label", "row", "ferplus_votes") if k in train and k in public]
    pool = {k: np.concatenate([np.asarray(train[k]), np.asarray(public[k])]) for k in keys}
    pool["usage"] = np.repeat(np.int8([0, 1]), [len(train["label"]), len(public["label"])])
    return pool, splits["test"]


def _pool_stage(stages: Stages, pool: dict) -> tuple[str, dict]:
    content = {k: pool[k] for k in ("image", "label", "row", "usage")}
    key = arrays_digest(content)

    def make(tmp: Path) -> dict:
        save_npz(tmp / "pool.npz", **content)
        return {"output_digest": key, "images": int(len(pool["label"])),
                "per_class": _per_class(pool["label"]),
                "usage": {"Training": int((pool["usage"] == 0).sum()), "PublicTest": int((pool["usage"] == 1).sum())}}

    folder, record = stages.run("pool", {"pool": key}, make)
    return str(folder.relative_to(stages.root) / "pool.npz"), record


def _per_class(labels: np.ndarray) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels), minlength=len(EMOTIONS))
    return {name: int(c) for name, c in zip(EMOTIONS, counts)}


def _curate_stage(stages: Stages, config: ml_collections.ConfigDict, pool: dict, upstream: dict) -> np.ndarray:
    """Removed flag per pool image (the configured removal signals; the pool is their Training split)."""
    from ferjax.tasks.curate import run_signals, signal_names  # noqa: PLC0415

    view = {"train": {k: pool[k] for k in ("image", "label", "row")}}

    def make(tmp: Path) -> dict:
        signals = run_signals(config, view, stages.root / "cache")
        removed = np.zeros(len(pool["label"]), bool)
        flags = {}
        for name, res in signals.items():
            removed |= res.flagged
            flags[name] = res.flagged
        save_npz(tmp / "removed.npz", removed=removed, **{f"signal_{n}": f for n, f in flags.items()})
        return {"output_digest": arrays_digest({"removed": removed}), "removed": int(removed.sum()),
                "per_signal": {n: int(f.sum()) for n, f in flags.items()},
                "signal_info": {n: r.info for n, r in signals.items()}}

    args = config.curation_signal_args.to_dict()
    inputs = {**upstream, "signals": signal_names(config),
              "args": {n: args.get(n, {}) for n in signal_names(config)}}
    folder, record = stages.run("curate", inputs, make)
    with np.load(folder / "removed.npz") as z:
        return z["removed"]


def _relabel_stage(stages: Stages, config: ml_collections.ConfigDict, pool: dict, removed: np.ndarray,
                   upstream: dict) -> dict[str, np.ndarray]:
    """Labels after relabeling (every pool image left after removals, before any split): label,
    relabeled and dropped (a label issue with no confident class) per pool image."""
    from ferjax.curation.relabel import confident_relabeling  # noqa: PLC0415
    from ferjax.tasks.curate import kfold_recipe  # noqa: PLC0415
    from ferjax.tasks.kfold import out_of_fold_probabilities  # noqa: PLC0415

    k, r = config.kfold, config.relabel

    def make(tmp: Path) -> dict:
        label = np.asarray(pool["label"]).copy()
        relabeled = np.zeros(len(label), bool)
        dropped = np.zeros(len(label), bool)
        info = {"folds": 0}
        if k.folds:
            kept = np.flatnonzero(~removed)
            train = {key: pool[key][kept] for key in ("image", "label", "row")}
            # the folds' own cache (resumable per fold) sits beside the stages
            probs, fold_info = out_of_fold_probabilities(kfold_recipe(k), train, k.folds, k.seed,
                                                         k.selection_fraction, stages.root / "relabel")
            rel = confident_relabeling(train["label"], probs, r.filter_by, min_prob=r.min_prob,
                                       unconfident=r.unconfident)
            changed = rel.issue & (rel.new_label >= 0) & (rel.new_label != train["label"])
            label[kept[changed]] = rel.new_label[changed]
            relabeled[kept[changed]] = True
            dropped[kept[rel.issue & (rel.new_label < 0)]] = True
            info = {key: v for key, v in fold_info.items() if key != "per_fold"}
            info.update(issues=int(rel.issue.sum()), thresholds=rel.thresholds.round(4).tolist())
        save_npz(tmp / "relabel.npz", label=label, relabeled=relabeled, dropped=dropped)
        return {"output_digest": arrays_digest({"label": label, "relabeled": relabeled, "dropped": dropped}),
                "relabeled": int(relabeled.sum()), "dropped": int(dropped.sum()), "info": info,
                "transitions": _transitions(pool["label"], label, relabeled)}

    inputs = {**upstream, "kfold": k.to_dict(), "relabel": r.to_dict()}
    folder, _ = stages.run("relabel", inputs, make)
    with np.load(folder / "relabel.npz") as z:
        return {key: z[key] for key in ("label", "relabeled", "dropped")}


def _transitions(before: np.ndarray, after: np.ndarray, changed: np.ndarray) -> dict[str, int]:
    """'old -> new': count of the relabeled images, most frequent first."""
    pairs = [f"{EMOTIONS[a]} -> {EMOTIONS[b]}" for a, b in zip(np.asarray(before)[changed], np.asarray(after)[changed])]
    names, counts = np.unique(pairs, return_counts=True) if pairs else ([], [])
    return {str(n): int(c) for c, n in sorted(zip(counts, names), reverse=True)}


def _generate_stage(stages: Stages, config: ml_collections.ConfigDict, pool: dict, kept: np.ndarray,
                    label: np.ndarray, generators: list, upstream: dict) -> tuple[str | None, dict]:
    """Generated images: each generator tops its target class up to `generate.target_count` (0: the
    median class size of the relabelled set) from source-class images of that set, each once."""
    from ferjax.tasks.balance import translate_images, write_preview  # noqa: PLC0415
    from ferjax.train.generator_export import load_generator  # noqa: PLC0415

    g = config.generate

    def make(tmp: Path) -> dict:
        counts = np.bincount(label[kept], minlength=len(EMOTIONS))
        target = g.target_count or int(round(float(np.median(counts))))
        rng = np.random.default_rng(g.seed)
        parts, pairs = [], []
        for i, (folder, meta, _) in enumerate(generators):
            src, tgt = class_index(meta["source_class"]), class_index(meta["target_class"])
            need = int(target - counts[tgt])
            sources = np.flatnonzero(kept & (label == src))
            entry = {"generator": str(folder), "source": EMOTIONS[src], "target": EMOTIONS[tgt],
                     "target_count": target, "before": int(counts[tgt]), "generated": max(need, 0)}
            pairs.append(entry)
            if need <= 0:
                continue
            if need > len(sources):
                raise ValueError(f"generate.target_count={target} needs {need} generated {EMOTIONS[tgt]} images "
                                 f"but the relabelled set has {len(sources)} {EMOTIONS[src]} images, each "
                                 f"translated at most once; lower --config.generate.target_count")
            pick = np.sort(rng.choice(sources, need, replace=False))
            gen = load_generator(folder)
            images = translate_images(gen.model, gen.variables, pool["image"][pick], g.batch_size,
                                      f"{EMOTIONS[src]} -> {EMOTIONS[tgt]}")
            write_preview(tmp / f"pair{i}", pool["image"][pick], images, images, src, tgt)
            entry["preview"] = f"pair{i}_preview.png"
            parts.append((images, np.full(need, tgt, np.int32), pick, np.full(need, i, np.int32)))
            counts[tgt] += need
        shape = pool["image"].shape[1:]
        image, lab, source, pair = (np.concatenate(x) for x in zip(*parts)) if parts else (
            np.zeros((0, *shape), np.uint8), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32))
        save_npz(tmp / "generated.npz", image=image, label=lab, source_index=source, pair=pair)
        return {"output_digest": arrays_digest({"image": image, "label": lab, "source_index": source}),
                "generated": int(len(lab)), "pairs": pairs, "per_class_after": _per_class(
                    np.concatenate([label[kept], lab]))}

    inputs = {**upstream, "generators": [[m, d] for _, m, d in generators], "generate": g.to_dict()}
    folder, record = stages.run("generate", inputs, make)
    return str(folder.relative_to(stages.root) / "generated.npz"), record


def _members(row: str, pool: dict, removed, relabel: dict | None, generated: dict | None) -> dict:
    """The modified set of `row` as split members (before parts and twins are set)."""
    n = len(pool["label"])
    keep = np.ones(n, bool)
    label = np.asarray(pool["label"]).astype(np.int32)
    relabeled = np.zeros(n, bool)
    if row in ("b", "c", "d"):
        keep &= ~removed
    if row in ("c", "d"):
        keep &= ~relabel["dropped"]
        label, relabeled = relabel["label"].astype(np.int32), relabel["relabeled"]
    idx = np.flatnonzero(keep)
    m = {"source": np.full(len(idx), paper_split.POOL, np.int8), "index": idx, "label": label[idx],
         "original_label": np.asarray(pool["label"])[idx].astype(np.int32), "relabeled": relabeled[idx]}
    if row == "d" and generated is not None and len(generated["label"]):
        k = len(generated["label"])
        m = {"source": np.concatenate([m["source"], np.full(k, paper_split.GENERATED, np.int8)]),
             "index": np.concatenate([idx, np.arange(k)]),
             "label": np.concatenate([m["label"], generated["label"].astype(np.int32)]),
             "original_label": np.concatenate([m["original_label"],
                                               np.asarray(pool["label"])[generated["source_index"]].astype(np.int32)]),
             "relabeled": np.concatenate([m["relabeled"], np.zeros(k, bool)])}
    return m


def _split_stage(stages: Stages, config: ml_collections.ConfigDict, row: str, members: dict, pool: dict,
                 generated: dict | None, files: dict, upstream: dict) -> tuple[dict, str]:
    """The row's members with their part (seeded keys: one per pool image, one per generated image)
    and, for test members, whether an exact or near duplicate sits in the row's 80%."""
    from ferjax.curation.signals import training_twins  # noqa: PLC0415

    s = config.paper_split

    def make(tmp: Path) -> dict:
        gen = members["source"] == paper_split.GENERATED
        pool_keys = np.random.default_rng(s.seed).random(len(pool["label"]))
        n_gen = len(generated["label"]) if generated is not None else 0
        gen_keys = np.random.default_rng([s.seed, 1]).random(n_gen)
        keys = np.where(gen, gen_keys[np.where(gen, members["index"], 0)] if n_gen else 0.0,
                        pool_keys[members["index"]])
        part = paper_split.random_parts(keys, s.test_fraction, s.selection_fraction)
        images, _ = paper_split.member_images(members, pool, generated)
        test = part == 2
        twin = np.zeros(len(part), bool)
        twin[test] = training_twins(images[~test], images[test])
        full = {**members, "part": part, "twin": twin}
        paper_split.write(tmp, full, files["pool"], files.get("generated") if row == "d" else None,
                          {"row": row, "paper_split": s.to_dict()})
        return {"output_digest": arrays_digest(full), "members": int(len(part)),
                **{name: int((part == code).sum()) for code, name in enumerate(paper_split.PARTS)},
                "test_twins": int(twin.sum()), "test_relabeled": int((test & members["relabeled"]).sum()),
                "test_generated": int((test & gen).sum())}

    folder, record = stages.run(f"split {row}", {**upstream, "row": row, "paper_split": s.to_dict()}, make,
                                folder_name=f"split_{row}")
    paper_split.register(stages.root, row, folder)
    with np.load(folder / paper_split.SPLIT_FILE) as z:
        return {f: z[f] for f in paper_split.MEMBER_FIELDS}, record["output_digest"]


def _train_stage(stages: Stages, config: ml_collections.ConfigDict, row: str, seed: int, members: dict,
                 split_key: str, pool: dict, generated: dict | None, private: dict) -> Path:
    """One classifier of `row`: trained on the row's 80% (resumed when interrupted), tested on its
    20%, then its predictions on PrivateTest (`predictions_privatetest.npz`)."""
    from ferjax.tasks.studies.shortcut import run_predictor  # noqa: PLC0415
    from ferjax.tasks.train_classifier import train_classifier  # noqa: PLC0415

    recipe = _row_recipe(config, row, seed)
    fields = {k: v for k, v in cfg_lib.flat_config(recipe).items() if not k.startswith(LOCATION_FIELDS)}
    key = digest({"recipe": fields, "split": split_key, "seed": seed})
    run_dir = stages.root / "runs" / key  # by content: rows with the same data and recipe share it
    name = f"train {row} seed {seed}"
    head = f"[{stages.done + 1}/{stages.total}] {name}"
    timing = run_dir / "stage_seconds.json"  # wall time over every attempt, written when the stage ends
    done = (run_dir / "report.json").is_file() and (run_dir / "predictions_privatetest.npz").is_file()
    if done:
        made = json.loads(timing.read_text()) if timing.is_file() else {
            "seconds": json.loads((run_dir / "report.json").read_text()).get("wall_seconds", 0.0), "attempts": 1}
        print(cached_line(head, run_dir.relative_to(stages.root), made["seconds"]), flush=True)
        stages.record(name, made["seconds"], True, made["attempts"], key=key, run=str(run_dir))
        return run_dir
    with stages.timed(key) as elapsed:
        if not (run_dir / "report.json").is_file():
            print(f"{head}: training {recipe.name} -> {run_dir.relative_to(stages.root)}", flush=True)
            parts = paper_split.assemble(members, pool, generated)
            data = {p: {k: parts[p][k] for k in ("image", "label", "row")} for p in paper_split.PARTS}
            train_classifier(recipe, str(run_dir), data)
        predict = run_predictor(run_dir)
        save_npz(run_dir / "predictions_privatetest.npz", pred=predict(private["image"]),
                 row=np.asarray(private["row"]))
        seconds, attempts = elapsed()
        atomic_write_bytes(timing, json.dumps({"seconds": round(seconds, 1), "attempts": attempts}).encode())
    print(done_line(head, seconds, attempts), flush=True)
    stages.record(name, seconds, False, attempts, key=key, run=str(run_dir))
    return run_dir


# ------------------------------------------------------------------------------------------- the task
def reproduce_paper(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs every stage (module docstring), scores every classifier and writes WORKDIR/report.md."""
    t0 = time.perf_counter()
    rows = requested_rows(config)
    if "e" in rows:
        config = _paper_backbone(config)
    checked = _check(config, rows)
    needs, generators = checked["needs"], checked["generators"]
    split_rows = sorted({SPLIT_OF[r] for r in rows})
    seeds = {r: config.seeds_b_c if r in ("b", "c") else config.seeds for r in rows}
    stages = Stages(workdir, 1 + len(needs) + len(split_rows) + sum(seeds.values()))
    stages.root.mkdir(parents=True, exist_ok=True)

    pool, private = _load(config)
    print(f"pool: {len(pool['label'])} FER2013 Training + PublicTest images; PrivateTest ({len(private['label'])}) "
          f"is held out of every stage", flush=True)
    files = {}
    files["pool"], record = _pool_stage(stages, pool)
    up = {"a": {"pool": record["output_digest"]}}  # per row, the digests of the stage outputs it reads
    removed, relabel, generated = np.zeros(len(pool["label"]), bool), None, None
    if "curate" in needs:
        removed = _curate_stage(stages, config, pool, up["a"])
        up["b"] = {**up["a"], "curate": stages.log["curate"]["output_digest"]}
    if "relabel" in needs:
        relabel = _relabel_stage(stages, config, pool, removed, up["b"])
        up["c"] = {**up["b"], "relabel": stages.log["relabel"]["output_digest"]}
    if "generate" in needs:
        kept = ~removed & ~relabel["dropped"]
        files["generated"], record = _generate_stage(stages, config, pool, kept, relabel["label"], generators,
                                                     up["c"])
        with np.load(stages.root / files["generated"]) as z:
            generated = {k: z[k] for k in ("image", "label", "source_index", "pair")}
        up["d"] = {**up["c"], "generate": record["output_digest"]}

    splits, split_keys = {}, {}
    for row in split_rows:
        members = _members(row, pool, removed, relabel, generated)
        splits[row], split_keys[row] = _split_stage(stages, config, row, members, pool, generated, files,
                                                    up[row])
    runs = {row: [] for row in rows}
    for seed in range(max(seeds.values())):  # seed-major: an interrupted run holds every row's first seeds
        for row in (r for r in rows if seed < seeds[r]):
            s = SPLIT_OF[row]
            runs[row].append(_train_stage(stages, config, row, seed, splits[s], split_keys[s], pool, generated,
                                          private))

    report = reproduce_report.write(config, stages, rows, runs, splits, SPLIT_OF, private, pool, generated)
    return {"experiment": config.name, "report": str(report["path"]), "stages": stages.table(),
            "accuracy": report["accuracy"], "wall_seconds": round(time.perf_counter() - t0, 1)}
