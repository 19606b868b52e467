"""balance_fer2013: a tiny randomly initialised `resnet` generator exported in the checkpoint
contract balances the synthetic FER2013; bad input fails before any work; a classifier trains on
the result by configuration."""
from __future__ import annotations

import csv
import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli
from ferjax import config as cfg_lib
from ferjax.tasks import balance as balance_task
from ferjax.data.derived import DerivedBuilder
from ferjax.registry import DATASETS, GENERATORS
from ferjax.train.generator_export import GeneratorCheckpointError, export_generator

KWARGS = {"base": 8, "blocks": 1}
NEUTRAL, DISGUST = 6, 1


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    model = GENERATORS.create("resnet", **KWARGS)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)), train=False)
    return export_generator(tmp_path_factory.mktemp("gen") / "g", "resnet", KWARGS, variables,
                            "neutral", "disgust", step=7)


@pytest.fixture(scope="module")
def reverse_dir(generator_dir):
    """F (disgust -> neutral) beside G, where a CycleGAN run exports it."""
    model = GENERATORS.create("resnet", **KWARGS)
    variables = model.init(jax.random.key(1), jnp.zeros((1, 48, 48, 1)), train=False)
    return export_generator(generator_dir.parent / "generator_reverse", "resnet", KWARGS, variables,
                            "disgust", "neutral", step=7)


@pytest.fixture(scope="module")
def data_args(synthetic_csv, tfds_dir):
    return [f"data.fer2013_path={synthetic_csv}", f"data.tfds_data_dir={tfds_dir}"]


@pytest.fixture(scope="module")
def balanced(generator_dir, data_args, tmp_path_factory):
    """The command line run: 160 Training rows, disgust 23, neutral 22; target_count 40."""
    wd = tmp_path_factory.mktemp("balance")
    proc = run_cli("--experiment=balance_fer2013", f"--config.generator_checkpoint={generator_dir}",
                   "--config.target_count=40", "--config.batch_size=8", f"--workdir={wd}",
                   *(f"--config.{a}" for a in data_args))
    return proc, json.loads(proc.stdout.strip().splitlines()[-1]), wd / "dataset"


def test_balance_writes_generated_examples_with_provenance(balanced, generator_dir, data_args):
    proc, summary, out = balanced
    assert "neutral -> disgust" in proc.stderr and "batch" in proc.stderr  # the progress bar
    assert summary["output"] == str(out) and summary["generated"] == 17
    preview = cv2.imread(summary["preview"], cv2.IMREAD_GRAYSCALE)  # source and G(x) rows of 8
    assert 0.25 < preview.shape[0] / preview.shape[1] < 0.4
    assert summary["train_per_class_before"]["disgust"] == 23
    assert summary["train_per_class_after"]["disgust"] == 40
    assert summary["train_per_class_after"]["neutral"] == summary["train_per_class_before"]["neutral"] == 22
    manifest = json.loads((out / "manifest.json").read_text())
    assert "python -m ferjax.run --experiment=balance_fer2013" in manifest["command"]
    assert manifest["info"]["balance"]["generator"]["step"] == 7
    with open(out / "provenance.csv", newline="") as f:
        gen = [r for r in csv.DictReader(f) if r["action"] == "added"]
    assert len(gen) == 17 and {r["source"] for r in gen} == {"generated"}
    assert {r["generator_checkpoint"] for r in gen} == {str(generator_dir.resolve())}
    rows = [int(r["base_row"]) for r in gen]
    assert len(set(rows)) == 17 and all(r % 7 == NEUTRAL and r < 160 for r in rows)  # Training neutral rows
    assert {r["original_label"] for r in gen} == {"neutral"} and {r["label"] for r in gen} == {"disgust"}

    # The images are the generator's output on those rows, computed here independently.
    cfg = cfg_lib.build("fer2013_vgg:tiny", [*data_args, "dataset=derived", f"data.derived_dir={out}",
                                             "data.limit_per_split=0"])
    base = DATASETS.create("fer2013", cfg=cfg.data, protocol="original")["train"]
    train = DATASETS.create("derived", cfg=cfg.data, protocol="original")["train"]
    model = GENERATORS.create("resnet", **KWARGS)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)), train=False)
    src = base["image"][np.searchsorted(base["row"], rows)].astype(np.float32) / 127.5 - 1
    want = np.clip(np.round((np.asarray(model.apply(variables, src, train=False)) + 1) * 127.5), 0, 255)
    got = train["image"][-17:].astype(np.float32)
    assert np.abs(got - want).max() <= 1  # batch 8 vs 17 at once: float rounding may differ by 1
    assert (got == want).mean() > 0.99


@pytest.mark.slow  # ~30 s here, mostly compiling vgg_small; the data side is covered above
def test_classifier_trains_on_derived_by_configuration(balanced, data_args, tmp_path):
    _, _, out = balanced
    proc = run_cli("--experiment=fer2013_vgg:tiny", "--config.dataset=derived",
                   f"--config.data.derived_dir={out}", *(f"--config.{a}" for a in data_args),
                   "--config.train.max_steps=2", "--config.train.epochs=1", f"--workdir={tmp_path}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["test_report"]["n"] == 64
    assert json.loads((tmp_path / "config.json").read_text())["data"]["derived_dir"] == str(out)


def _config(generator_dir, data_args, tmp_path, *extra):
    return cfg_lib.build("balance_fer2013", [f"generator_checkpoint={generator_dir}", *data_args,
                                             f"out_dir={tmp_path / 'out'}", *extra])


@pytest.fixture
def no_data_loaded(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the data were loaded before the input was checked")

    monkeypatch.setattr(balance_task, "DerivedBuilder", fail)


@pytest.mark.parametrize("extra, message", [
    (["source_class=neutrl"], r"unknown class 'neutrl'. Did you mean: neutral"),
    (["target_class=disgst"], r"unknown class 'disgst'. Did you mean: disgust"),
    (["target_class=fear"], r"translates neutral -> disgust, the config asks for neutral -> fear: "
                            r"pass --config.source_class=neutral --config.target_class=disgust"),
])
def test_bad_class_names_fail_before_loading_data(extra, message, generator_dir, data_args, tmp_path,
                                                  no_data_loaded):
    with pytest.raises(ValueError, match=message):
        balance_task.balance(_config(generator_dir, data_args, tmp_path, *extra), str(tmp_path))
    assert not (tmp_path / "out").exists()


def test_bad_generator_checkpoints_fail_before_loading_data(generator_dir, data_args, tmp_path,
                                                            no_data_loaded):
    import shutil

    def run(folder):
        balance_task.balance(_config(folder, data_args, tmp_path), str(tmp_path))

    with pytest.raises(GeneratorCheckpointError, match=r"generator_checkpoint=.*missing' is neither a folder nor "
                                                       "a registered pretrained generator"):
        run(tmp_path / "missing")
    wrong = tmp_path / "wrong"
    shutil.copytree(generator_dir, wrong)
    meta = json.loads((wrong / "generator.json").read_text())
    (wrong / "generator.json").write_text(json.dumps({**meta, "generator_kwargs": {"base": 16, "blocks": 1}}))
    with pytest.raises(GeneratorCheckpointError,
                       match=r"does not match generator 'resnet' with kwargs \{'base': 16, 'blocks': 1\}.*"
                             r"BatchNorm_0/mean: shape \[8\], the architecture has \[16\]"):
        run(wrong)
    (wrong / "generator.json").write_text(json.dumps({**meta, "generator_kwargs": {"base": 8, "blocks": 2}}))
    with pytest.raises(GeneratorCheckpointError, match=r"missing batch_stats/BatchNorm_7/mean \[16\]"):
        run(wrong)
    (wrong / "generator.json").write_text(json.dumps({**meta, "generator": "resnett"}))
    with pytest.raises(Exception, match="Did you mean: resnet"):
        run(wrong)
    (wrong / "generator.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "step"}))
    with pytest.raises(GeneratorCheckpointError, match="missing key 'step'"):
        run(wrong)
    (wrong / "generator.json").write_text(json.dumps(meta))
    (wrong / "generator.msgpack").write_bytes(b"\x00not msgpack")
    with pytest.raises(GeneratorCheckpointError, match="is not a flax msgpack file"):
        run(wrong)
    (wrong / "generator.msgpack").unlink()
    with pytest.raises(GeneratorCheckpointError, match="has no generator.msgpack"):
        run(wrong)
    assert not (tmp_path / "out").exists()


def test_existing_output_folder_fails_before_loading_data(generator_dir, data_args, tmp_path,
                                                          no_data_loaded):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match=r"out already exists.*--config.overwrite=True"):
        balance_task.balance(_config(generator_dir, data_args, tmp_path), str(tmp_path))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_replace_real_puts_generated_images_in_place_of_the_real(generator_dir, data_args, tmp_path):
    """GAN-train data: every real disgust example removed, 20 generated ones added."""
    summary = balance_task.balance(_config(generator_dir, data_args, tmp_path, "replace_real=True",
                                           "target_count=20"), str(tmp_path))
    assert summary["replaced_real"] == 23 and summary["generated"] == 20
    assert summary["train_per_class_after"]["disgust"] == 20
    with open(tmp_path / "out" / "provenance.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    removed = [ln for ln in lines if ln["action"] == "removed"]
    assert len(removed) == 23 and {ln["original_label"] for ln in removed} == {"disgust"}
    assert all("replace_real" in ln["reason"] for ln in removed)
    disgust_now = [ln for ln in lines if ln["label"] == "disgust" and ln["action"] != "removed"]
    assert len(disgust_now) == 20 and {ln["source"] for ln in disgust_now} == {"generated"}


@pytest.fixture
def no_translation(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("translation started before the counts were checked")

    monkeypatch.setattr(balance_task, "tqdm", fail)


def test_bad_counts_fail_before_translating(generator_dir, data_args, tmp_path, no_translation):
    with pytest.raises(ValueError, match=r"target_count=5 is below the current count 23 of 'disgust'; "
                                         r"set it to at least 23 \(0: the median class size, 23\)"):
        balance_task.balance(_config(generator_dir, data_args, tmp_path, "target_count=5"), str(tmp_path))
    with pytest.raises(ValueError, match=r"needs 77 generated images but 'neutral' has 22 Training images"):
        balance_task.balance(_config(generator_dir, data_args, tmp_path, "target_count=100"), str(tmp_path))
    assert not (tmp_path / "out").exists()


def test_empty_source_class_fails_before_translating(generator_dir, data_args, tmp_path, no_translation):
    """A curated base without neutral faces (a derived dataset with every neutral row removed)."""
    cfg = cfg_lib.build("balance_fer2013", data_args).data
    b = DerivedBuilder("fer2013", cfg)
    for row in range(NEUTRAL, 160, 7):
        b.remove(row, "test: no neutral faces")
    curated = b.write(tmp_path / "curated", "test")
    config = _config(generator_dir, data_args, tmp_path, "dataset=derived", f"data.derived_dir={curated}")
    with pytest.raises(ValueError, match=r"source class 'neutral' has no Training examples in dataset "
                                         r"'derived'; choose another --config.source_class"):
        balance_task.balance(config, str(tmp_path))


def test_bad_input_on_the_command_line_exits_with_the_message(generator_dir, data_args, tmp_path):
    proc = run_cli("--experiment=balance_fer2013", f"--config.generator_checkpoint={generator_dir}",
                   "--config.source_class=nuetral", f"--workdir={tmp_path}",
                   *(f"--config.{a}" for a in data_args), check=False)
    assert proc.returncode == 1 and "Did you mean: neutral" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "dataset").exists()


def test_oversample_adds_copies_of_real_target_images(data_args, tmp_path):
    """method=oversample (the baseline): 17 seeded copies of the 23 real disgust images, each
    image at most once per round, provenance naming the copied row; no generator needed."""
    cfg = cfg_lib.build("balance_fer2013", [*data_args, "method=oversample", "target_count=40",
                                            f"out_dir={tmp_path / 'out'}"])
    summary = balance_task.balance(cfg, str(tmp_path))
    assert summary["added"] == 17 and summary["train_per_class_after"]["disgust"] == 40
    assert summary["train_per_class_after"]["neutral"] == summary["train_per_class_before"]["neutral"]
    with open(tmp_path / "out" / "provenance.csv", newline="") as f:
        added = [r for r in csv.DictReader(f) if r["action"] == "added"]
    rows = [int(r["base_row"]) for r in added]
    assert len(added) == 17 and len(set(rows)) == 17  # one round: no image copied twice
    assert {r["source"] for r in added} == {"original"} and {r["label"] for r in added} == {"disgust"}
    data = DATASETS.create("derived", cfg=cfg_lib.build(
        "fer2013_vgg:tiny", [*data_args, "dataset=derived", f"data.derived_dir={tmp_path / 'out'}",
                             "data.limit_per_split=0"]).data)
    base = DATASETS.create("fer2013", cfg=cfg.data)
    by_row = {int(r): i for i, r in enumerate(base["train"]["row"])}
    copies = data["train"]["image"][-17:]
    assert all(np.array_equal(copies[i], base["train"]["image"][by_row[r]]) for i, r in enumerate(rows))
    with pytest.raises(ValueError, match="replace_real needs --config.method=generator"):
        balance_task.balance(cfg_lib.build("balance_fer2013", [*data_args, "method=oversample",
                                                               "replace_real=True"]), str(tmp_path))
    with pytest.raises(ValueError, match=r"method='copy': expected one of \['generator', 'oversample'\]"):
        balance_task.balance(cfg_lib.build("balance_fer2013", [*data_args, "method=copy"]), str(tmp_path))


def test_study_arms_get_their_datasets(generator_dir, data_args, tmp_path):
    """compare_balancing's gan_train arm: the real disgust examples replaced by as many generated
    ones (sad -> disgust here: the synthetic file has 22 neutral rows for its 23 disgust ones); a
    rerun with another generator is refused."""
    from ferjax.tasks.studies.balancing import _prepare

    cfg = cfg_lib.build("compare_balancing", [*data_args, f"generator_checkpoint={generator_dir}",
                                              "source_class=sad"])
    with pytest.raises(ValueError, match="translates neutral -> disgust, the config asks for sad"):
        _prepare(cfg, "gan_train", tmp_path)
    cfg = cfg_lib.build("compare_balancing", [*data_args, f"generator_checkpoint={generator_dir}"])
    with pytest.raises(ValueError, match="needs 23 generated images but 'neutral' has 22"):
        _prepare(cfg, "gan_train", tmp_path)
    out = _prepare(cfg_lib.build("compare_balancing", [*data_args, f"generator_checkpoint={generator_dir}",
                                                        "arms=as_is,oversample"]), "oversample", tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["train_per_class_after"]["disgust"] == 23  # median class size: no copies
    assert _prepare(cfg, "oversample", tmp_path) == out  # made before: reused


def test_matched_negatives_add_each_round_trip_labelled_source(generator_dir, reverse_dir, data_args,
                                                               tmp_path):
    """Beside each generated disgust image G(x), its round trip F(G(x)) labelled neutral, with
    the reverse generator and the same base row in its provenance; F the wrong way is refused."""
    from ferjax.data import derived
    from ferjax.train.generator_export import load_generator

    with pytest.raises(ValueError, match="translates neutral -> disgust at 48 px; the generator translates "
                                         "neutral -> disgust"):
        balance_task.balance(_config(generator_dir, data_args, tmp_path,
                                     f"matched_negatives={generator_dir}"), str(tmp_path))
    summary = balance_task.balance(_config(generator_dir, data_args, tmp_path, "target_count=40",
                                           f"matched_negatives={reverse_dir}"), str(tmp_path))
    assert summary["generated"] == summary["matched_negatives"] == 17
    assert summary["train_per_class_after"]["disgust"] == 40
    assert summary["train_per_class_after"]["neutral"] == 22 + 17
    _, entries, images = derived.read(tmp_path / "out")
    added = [e for e in entries if e.action == "added"]
    positives = [e for e in added if e.label == DISGUST]
    negatives = [e for e in added if e.label == NEUTRAL]
    assert len(positives) == len(negatives) == 17
    assert [e.base_row for e in positives] == [e.base_row for e in negatives]
    assert {e.generator_checkpoint for e in negatives} == {str(reverse_dir.resolve())}
    assert all("matched negative" in e.reason and e.source == "generated" for e in negatives)
    generated = images[[e.added_index for e in positives]]
    reverse = load_generator(reverse_dir)
    expected = balance_task.translate_images(reverse.model, reverse.variables, generated, 8, "test")
    np.testing.assert_array_equal(images[[e.added_index for e in negatives]], expected)


def test_study_matched_arm_finds_the_reverse_generator_beside_the_forward_one(generator_dir, reverse_dir,
                                                                               data_args, tmp_path):
    from ferjax.tasks.studies.balancing import _prepare, reverse_generator

    cfg = cfg_lib.build("compare_balancing", [*data_args, f"generator_checkpoint={generator_dir}",
                                              "target_count=30"])
    assert reverse_generator(cfg) == str(reverse_dir)
    out = _prepare(cfg, "cyclegan_matched", tmp_path)
    counts = json.loads((out / "manifest.json").read_text())["counts"]["train_per_class_after"]
    assert counts["disgust"] == 30 and counts["neutral"] == 22 + 7
    assert _prepare(cfg, "cyclegan_matched", tmp_path) == out  # made before: reused
    other = cfg_lib.build("compare_balancing", [*data_args, f"generator_checkpoint={generator_dir}",
                                                "target_count=30", f"reverse_generator_checkpoint={generator_dir}"])
    with pytest.raises(ValueError, match="was made with the reverse generator"):
        _prepare(other, "cyclegan_matched", tmp_path)
    missing = cfg_lib.build("compare_balancing", [*data_args, f"generator_checkpoint={generator_dir}",
                                                  f"reverse_generator_checkpoint={tmp_path / 'none'}"])
    with pytest.raises(ValueError, match="ferjax.train.generator_export --run=RUN_DIR"):
        _prepare(missing, "cyclegan_matched", tmp_path / "other")


def test_source_detail_keeps_coarse_generated_content_and_fine_source_detail():
    """The blend is exact where it should be: a flat generated image takes the source's texture
    around its own level; a generated image equal to its source comes back unchanged; a
    checkerboard (a transposed convolution's signature) is removed."""
    rng = np.random.default_rng(0)
    src = rng.integers(40, 200, (3, 48, 48, 1), dtype=np.uint8)
    assert np.array_equal(balance_task.keep_source_detail(src, src, 1.0), src)
    flat = np.full_like(src, 120)
    out = balance_task.keep_source_detail(flat, src, 1.0).astype(np.float32)
    detail = src.astype(np.float32) - np.stack(
        [cv2.GaussianBlur(s[..., 0].astype(np.float32), (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
         for s in src])[..., None]
    np.testing.assert_allclose(out, np.clip(np.rint(120 + detail), 0, 255), atol=1)
    checker = (np.indices((48, 48)).sum(0) % 2 * 60 + 90).astype(np.uint8)[None, ..., None]
    smooth = np.full((1, 48, 48, 1), 120, np.uint8)
    blended = balance_task.keep_source_detail(checker, smooth, 1.0).astype(np.float32)
    assert np.abs(np.diff(blended[0, 20:28, 20:28, 0], axis=1)).max() <= 2  # checkerboard gone
    assert np.abs(checker[0, 20:28, 20:28, 0].astype(float) - 120).max() == 30
    with pytest.raises(ValueError, match="expected a blur in pixels > 0"):
        balance_task.keep_source_detail(src, src, 0.0)


def test_source_detail_option_in_balance_and_study(generator_dir, data_args, tmp_path):
    """balance_fer2013 with source_detail_sigma adds keep_source_detail(G(x), x) with the setting in
    the manifest and the reason; the study's cyclegan_detail arm passes its sigma and refuses to
    reuse data made with another; a negative sigma, or one with oversampling, fails first."""
    from ferjax.data import derived
    from ferjax.tasks.studies.balancing import _prepare
    from ferjax.train.generator_export import load_generator

    for bad in (("source_detail_sigma=-1",), ("method=oversample", "source_detail_sigma=1.0")):
        with pytest.raises(ValueError, match="source_detail_sigma"):
            balance_task.balance(_config(generator_dir, data_args, tmp_path, *bad), str(tmp_path))
    summary = balance_task.balance(_config(generator_dir, data_args, tmp_path, "target_count=30",
                                           "source_detail_sigma=1.5"), str(tmp_path))
    assert summary["generated"] == 7
    preview = cv2.imread(summary["preview"], cv2.IMREAD_GRAYSCALE)  # source, G(x) and added rows
    assert summary["preview"] == str(tmp_path / "out_preview.png")
    assert 0.5 < preview.shape[0] / preview.shape[1] < 0.6  # 3 rows of 7 (2 rows: 0.36)
    manifest, entries, images = derived.read(tmp_path / "out")
    assert manifest["info"]["balance"]["source_detail_sigma"] == 1.5
    added = [e for e in entries if e.action == "added"]
    assert all("fine detail (above a 1.5 px Gaussian) from the source image" in e.reason for e in added)
    cfg = cfg_lib.build("fer2013_vgg:tiny", [*data_args, "data.limit_per_split=0"])
    base = DATASETS.create("fer2013", cfg=cfg.data, protocol="original")["train"]
    sources = base["image"][[e.base_row for e in added]]  # synthetic Training rows are CSV rows
    if sources.ndim == 3:
        sources = sources[..., None]
    forward = load_generator(generator_dir)
    generated = balance_task.translate_images(forward.model, forward.variables, sources, 8, "test")
    np.testing.assert_array_equal(images[[e.added_index for e in added]],
                                  balance_task.keep_source_detail(generated, sources, 1.5))

    study = cfg_lib.build("compare_balancing", [*data_args, f"generator_checkpoint={generator_dir}",
                                                "target_count=30", "source_detail_sigma=2.0"])
    out = _prepare(study, "cyclegan_detail", tmp_path / "study")
    assert derived.read(out)[0]["info"]["balance"]["source_detail_sigma"] == 2.0
    assert _prepare(study, "cyclegan_detail", tmp_path / "study") == out  # made before: reused
    study.source_detail_sigma = 1.0
    with pytest.raises(ValueError, match="was made with source_detail_sigma 2.0, not 1.0"):
        _prepare(study, "cyclegan_detail", tmp_path / "study")
