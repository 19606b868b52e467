"""FER2013 curation (experiment curate_fer2013): signals, k-fold out-of-fold probabilities, confident
learning, FER+ scoring, and the rule that no decision reads the FER+ votes."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from ferjax import config as cfg_lib
from ferjax.curation import scoring
from ferjax.tasks.kfold import out_of_fold_probabilities, stratified_folds
from ferjax.curation.relabel import confident_relabeling
from ferjax.curation.signals import (BlankSignal, DuplicatesSignal, TextGraphicsSignal, curation_view,
                                     save_npz, training_twins, yaw_ratio)
from conftest import synthetic_rows, write_csv

NO_DETECTOR_SIGNALS = "blank,text_graphics,duplicates"  # synthetic bands hold no faces


def _splits(train_images, train_labels, others=None):
    out = {"train": {"image": train_images, "label": np.asarray(train_labels, np.int32),
                     "row": np.arange(len(train_labels))}}
    for name, (img, lab) in (others or {}).items():
        out[name] = {"image": img, "label": np.asarray(lab, np.int32),
                     "row": 1000 + np.arange(len(lab))}
    return out


def _noise(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48, 1), dtype=np.uint8)


# ------------------------------------------------------------------------------------- signals
def test_blank_and_text_signals_flag_flat_images_only():
    images = _noise(6)
    images[0] = 0  # blank
    images[1] = 128 + (np.arange(48) % 2)[None, :, None]  # near-constant (std 0.5)
    images[2] = 255
    images[2, 20:28, 5:40] = 0  # black text on white: saturated and flat
    view = _splits(images, [0] * 6)
    blank = BlankSignal(max_std=2.0)(view)
    assert blank.flagged.tolist() == [True, True, False, False, False, False]
    assert blank.reason[0].startswith("near-constant") and blank.reason[3] == ""
    text = TextGraphicsSignal()(view)
    assert text.flagged[2] and not text.flagged[3:].any() and text.group == "non_face"


def test_duplicates_leaks_repeats_and_conflicts():
    train = _noise(6)
    train[1] = train[0]  # repeat, same label: keep row 0, remove row 1
    train[3] = train[2]  # conflicting labels: both removed
    train[5] = np.clip(train[4].astype(int) + 1, 0, 255).astype(np.uint8)  # near duplicate, same label
    test = _noise(2, seed=1)
    test[0] = train[4]  # leak: row 4 (and its near twin 5) sit in the test split
    view = _splits(train, [0, 0, 1, 2, 3, 3], {"test": (test, [3, 4])})
    res = DuplicatesSignal(max_distance=4)(view)
    assert res.flagged.tolist() == [False, True, True, True, True, True]
    assert res.reason[4].startswith("leak: same image as test row 1000")
    assert res.info["exact_groups"] == 3 and res.info["exact_conflicting_groups"] == 1
    assert res.info["exact_cross_split_groups"] == 1
    exact_only = DuplicatesSignal(max_distance=0)(view)
    assert not exact_only.flagged[5] or exact_only.score[5] == 0  # the near twin needs distance > 0


def test_yaw_ratio_frontal_and_turned():
    frontal = np.array([[[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]]], float)
    turned = frontal.copy()
    turned[0, 2, 0] = 32  # nose beyond the right eye
    assert yaw_ratio(frontal)[0] == pytest.approx(0.0)
    assert yaw_ratio(turned)[0] == pytest.approx(0.6)
    assert np.isnan(yaw_ratio(np.full((1, 5, 2), np.nan)))[0]


def test_curation_view_strips_ferplus_votes():
    splits = {"train": {"image": _noise(2), "label": np.zeros(2), "row": np.arange(2),
                        "ferplus_votes": np.zeros((2, 10))}}
    assert set(curation_view(splits)["train"]) == {"image", "label", "row"}


# ------------------------------------------------------------------------------------- k-fold and relabeling
def test_stratified_folds_balanced_and_deterministic():
    labels = np.repeat(np.arange(7), [40, 5, 41, 70, 48, 31, 49])
    folds = stratified_folds(labels, 5, seed=3)
    np.testing.assert_array_equal(folds, stratified_folds(labels, 5, seed=3))
    assert np.ptp(np.bincount(folds)) <= 1
    for c in range(7):
        assert np.ptp(np.bincount(folds[labels == c], minlength=5)) <= 1
    with pytest.raises(ValueError, match="at least 2 folds"):
        stratified_folds(labels, 1, 0)


def test_confident_learning_relabels_to_the_confident_class_or_removes():
    pytest.importorskip("cleanlab", reason="the optional extra 'curate' (cleanlab) is not installed")
    rng = np.random.default_rng(0)
    n, k = 700, 7
    truth = np.arange(n) % k
    probs = np.full((n, k), 0.02)
    probs[np.arange(n), truth] = 0.88
    probs += rng.uniform(0, 0.01, probs.shape)
    labels = truth.copy()
    wrong = np.arange(0, 70, 7)  # truth 0, labelled 3: the model is sure of class 0
    labels[wrong] = 3
    probs[wrong, 0] = 0.97
    unsure = np.arange(1, 71, 7)[:5]  # labelled 4, the model spreads its mass: no class is confident
    probs[unsure] = [0.2, 0.16, 0.16, 0.16, 0.05, 0.135, 0.135]
    labels[unsure] = 4
    probs /= probs.sum(1, keepdims=True)
    rel = confident_relabeling(labels, probs)
    assert rel.issue[wrong].all() and (rel.new_label[wrong] == 0).all()
    clean = np.setdiff1d(np.arange(n), np.r_[wrong, unsure])
    assert not rel.issue[clean].any() and (rel.new_label[clean] == labels[clean]).all()
    argmax = confident_relabeling(labels, probs, "predicted_neq_given")  # flags the unsure rows too
    assert argmax.issue[unsure].all() and (argmax.new_label[unsure] == -1).all()
    assert np.isnan(argmax.confident_prob[unsure]).all()
    masked = confident_relabeling(labels, probs, candidates=np.zeros(n, bool))
    assert not masked.issue.any()
    # a floor above the wrong rows' 0.97 leaves them no confident class: removed, or kept as labelled
    floor = confident_relabeling(labels, probs, min_prob=0.98)
    assert floor.issue[wrong].all() and (floor.new_label[wrong] == -1).all()
    assert (floor.thresholds >= 0.98).all()
    kept = confident_relabeling(labels, probs, min_prob=0.98, unconfident="keep")
    assert kept.issue[wrong].all() and (kept.new_label[wrong] == 3).all()
    assert (confident_relabeling(labels, probs, min_prob=0.5).new_label[wrong] == 0).all()


def test_missing_cleanlab_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)
    monkeypatch.setitem(sys.modules, "cleanlab.count", None)
    with pytest.raises(ImportError, match=r"ferjax\[curate\]"):
        confident_relabeling(np.zeros(3, int), np.full((3, 7), 1 / 7))


# ------------------------------------------------------------------------------------- FER+ scoring
def test_scoring_precision_recall_and_fixed_row_agreement():
    votes = np.zeros((6, 10), np.int16)
    votes[[0, 1], 9] = 10  # not a face
    votes[2, 3] = 6  # FER+ sad -> FER2013 4 (sad)
    votes[3, 1] = 7  # happiness -> 3
    votes[4, 0] = 5  # neutral -> 6
    votes[5] = -1  # no votes
    original = np.array([0, 0, 0, 3, 6, 2])
    curated = np.array([0, 0, 4, 3, 2, 2])
    action = np.array(["removed", "kept", "relabeled", "kept", "relabeled", "kept"])
    flags = {"blank": np.array([1, 0, 0, 0, 0, 0], bool), "text_graphics": np.array([0, 0, 1, 0, 0, 0], bool)}
    s = scoring.score(votes, original, curated, action, flags, [str(i) for i in range(7)])
    assert s["ferplus_not_a_face"] == 2
    assert s["removal"]["blank"] == {"flagged": 1, "true_positives": 1, "precision": 1.0, "recall": 0.5}
    assert s["removal"]["combined"]["precision"] == 0.5
    r = s["relabel"]
    assert r["fixed_rows"] == 3 and r["original_agreement"] == pytest.approx(2 / 3)
    assert r["curated_agreement"] == pytest.approx(2 / 3)  # row 2 fixed, row 4 broken
    assert r["relabeled_old_agreement"] == 0.5 and r["relabeled_new_agreement"] == 0.5
    assert s["old_to_new"]["counts"][0][4] == 1 and s["old_to_new"]["counts"][6][2] == 1
    assert "by_row_parity" not in r
    halves = scoring.score(votes, original, curated, action, flags, [str(i) for i in range(7)],
                           rows=np.arange(6) + 11)  # fixed rows 13, 15 odd; 14 even
    assert halves["relabel"]["by_row_parity"] == {
        "even": {"fixed_rows": 1, "original_agreement": 1.0, "curated_agreement": 1.0},
        "odd": {"fixed_rows": 2, "original_agreement": 0.5, "curated_agreement": 0.5}}
    skipped = scoring.score(np.full((6, 10), -1), original, curated, action, flags, ["a"] * 7)
    assert skipped["skipped"] and "fer2013new.csv" in skipped["reason"]


# ------------------------------------------------------------------------------------- the task
def _config(csv_dir: Path, tfds_dir: Path, *overrides: str) -> ml_collections.ConfigDict:
    return cfg_lib.build("curate_fer2013:tiny", [f"data.fer2013_path={csv_dir}", f"data.tfds_data_dir={tfds_dir}",
                                                 *overrides])


def _with_ferplus(folder: Path, rows) -> Path:
    """Writes fer2013new.csv beside the CSV: 10 NF votes on the first two Training rows, sadness elsewhere."""
    lines = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    for i, (_, _, usage) in enumerate(rows):
        votes = [0] * 9 + [10] if i < 2 else [2, 0, 0, 8, 0, 0, 0, 0, 0, 0]
        lines.append(f"{usage},fer{i:07d}.png," + ",".join(map(str, votes)))
    (folder / "fer2013new.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    """The same synthetic FER2013 CSV twice, with and without fer2013new.csv, plus a blank and a
    repeated Training image so that signals fire."""
    rows = synthetic_rows((120, 24, 24), seed=5)
    rows[0] = (rows[0][0], np.zeros((48, 48), np.uint8), rows[0][2])
    rows[3] = (rows[2][0], rows[2][1].copy(), rows[3][2])
    with_votes = tmp_path_factory.mktemp("with_ferplus")
    without = tmp_path_factory.mktemp("without_ferplus")
    for d in (with_votes, without):
        write_csv(d / "fer2013.csv", rows)
    _with_ferplus(with_votes, rows)
    return with_votes, without


def _run(src: Path, tfds: Path, workdir: Path, *overrides: str) -> dict:
    from ferjax.tasks.curate import curate

    return curate(_config(src, tfds, *overrides), str(workdir))


def test_curation_identical_with_and_without_ferplus(two_sources, tmp_path):
    """Signals only (no fold models): provenance byte-identical; scoring runs only with the votes."""
    with_votes, without = two_sources
    args = (f"curation_signals={NO_DETECTOR_SIGNALS}", "kfold.folds=0")
    a = _run(with_votes, tmp_path / "tfds_a", tmp_path / "a", *args)
    b = _run(without, tmp_path / "tfds_b", tmp_path / "b", *args)
    prov_a = (Path(a["output"]) / "provenance.csv").read_bytes()
    assert prov_a == (Path(b["output"]) / "provenance.csv").read_bytes()
    assert a["actions"] == b["actions"] and a["actions"]["removed"] == 2  # the blank row and the repeat
    assert not a["ferplus"]["skipped"] and a["ferplus"]["removal"]["blank"]["true_positives"] == 1
    assert b["ferplus"]["skipped"] and "fer2013new.csv" in b["ferplus"]["reason"]
    report = Path(b["report"]).read_text()
    assert "Skipped: no FER+ votes" in report
    # the report shows the FER+ not-a-face image no signal flagged (row 1), only with the votes
    assert "missed_non_face.png" in Path(a["report"]).read_text()
    assert (Path(a["report"]).parent / "missed_non_face.png").is_file()
    assert "missed_non_face" not in report and not (Path(b["report"]).parent / "missed_non_face.png").exists()
    header = prov_a.decode().splitlines()[0]
    assert "score_blank" in header and "score_duplicates" in header
    # every default signal, the detector ones included (YuNet finds no face in these bands)
    a = _run(with_votes, tmp_path / "tfds_a", tmp_path / "a2", "kfold.folds=0")
    b = _run(without, tmp_path / "tfds_b", tmp_path / "b2", "kfold.folds=0")
    assert set(a["signals"]) == {"blank", "text_graphics", "no_face", "non_frontal", "duplicates"}
    assert (Path(a["output"]) / "provenance.csv").read_bytes() == \
        (Path(b["output"]) / "provenance.csv").read_bytes()


@pytest.mark.slow
def test_kfold_curation_end_to_end_cached_and_ferplus_blind(two_sources, tmp_path):
    """curate_fer2013:tiny with 2 fold classifiers: out-of-fold probabilities for every Training row,
    relabels and removals in provenance, a rerun reads the cache (no training), and the same run
    without fer2013new.csv writes the same provenance."""
    pytest.importorskip("cleanlab", reason="the optional extra 'curate' (cleanlab) is not installed")
    with_votes, without = two_sources
    args = (f"curation_signals={NO_DETECTOR_SIGNALS}", "kfold.recipe_overrides=train.epochs=3")
    first = _run(with_votes, tmp_path / "tfds_a", tmp_path / "a", *args)
    provenance = (Path(first["output"]) / "provenance.csv").read_bytes()
    rel = first["relabeling"]
    assert not rel["cached"] and len(rel["per_fold"]) == 2
    assert sum(f["held_out"] for f in rel["per_fold"]) == 120
    oof = np.load(Path(rel["cache"]) / "oof.npz")
    assert oof["probs"].shape == (120, 7) and np.allclose(oof["probs"].sum(1), 1, atol=1e-5)
    again = _run(with_votes, tmp_path / "tfds_a", tmp_path / "a", *args, "relabel.filter_by=both",
                 "relabel.unconfident=keep", "relabel.min_prob=0.9")
    assert again["relabeling"]["cached"] and again["wall_seconds"] < 30
    kept = again["relabeling"]
    assert kept["removed"] == 0 and kept["kept"] + kept["relabeled"] == kept["issues"]
    assert again["actions"]["removed"] == first["actions"]["removed"] - first["relabeling"]["removed"]
    blind = _run(without, tmp_path / "tfds_b", tmp_path / "b", *args)
    assert provenance == (Path(blind["output"]) / "provenance.csv").read_bytes()
    assert "relabeled" in provenance.decode() or "confident learning" in provenance.decode()
    summary = json.loads((tmp_path / "a" / "report" / "summary.json").read_text())
    assert summary["relabeling"]["filter_by"] == "both"
    assert (tmp_path / "a" / "report" / "report.md").is_file()


def test_finished_folds_are_not_retrained(tmp_path):
    """A fold with its oof.npz is read, not retrained (the kill-and-rerun path): here every fold is
    pre-written, so no classifier is built at all."""
    labels = np.arange(20) % 2
    train = {"image": _noise(20), "label": labels, "row": np.arange(20) + 7}
    recipe = cfg_lib.build("fer2013_vgg:tiny")
    folds = stratified_folds(labels, 2, 0)
    from ferjax.tasks import kfold

    key = kfold.cache_key(recipe, train, 2, 0, 0.1)
    for f in range(2):
        held = folds == f
        p = np.zeros((held.sum(), 7))
        p[:, f] = 1
        save_npz(tmp_path / "folds" / key / str(f) / "oof.npz", probs=p, row=train["row"][held],
                         info=np.asarray(json.dumps({"fold": f})))
    probs, info = out_of_fold_probabilities(recipe, train, 2, 0, 0.1, tmp_path)
    assert not info["cached"] and (probs.argmax(1) == folds).all()
    probs2, info2 = out_of_fold_probabilities(recipe, train, 2, 0, 0.1, tmp_path)
    assert info2["cached"] and np.array_equal(probs, probs2)
    shutil.rmtree(tmp_path / "folds" / key / "0")
    assert out_of_fold_probabilities(recipe, train, 2, 0, 0.1, tmp_path)[1]["cached"]  # assembled file wins


def test_no_face_flags_a_face_turned_on_its_side_and_keeps_it_upright(tmp_path):
    """A real face cropped to 48x48 is kept upright; turned 90 degrees it is flagged (as sideways or
    as no face), and the detector pass is cached: a second call reads the cache."""
    import cv2

    from conftest import MEDIA, MODELS, require_detector, require_files
    from ferjax.curation.signals import NoFaceSignal
    from ferjax.registry import DETECTORS

    video = MEDIA / "one_face_pexels_640x360.mp4"
    require_files(video, why="real face video")
    require_detector("yunet")
    ok, frame = cv2.VideoCapture(str(video)).read()
    assert ok
    x1, y1, x2, y2 = (int(v) for v in DETECTORS.create_accepting("yunet", {"models_dir": str(MODELS)})(frame)[0].box)
    face = cv2.resize(cv2.cvtColor(frame[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY), (48, 48))
    images = np.stack([face, cv2.rotate(face, cv2.ROTATE_90_CLOCKWISE)])[..., None]
    view = _splits(images, [3, 3])
    # upright the turned face still scores ~0.41 (measured), turned back ~0.94: thresholds above that
    signal = NoFaceSignal(models_dir=str(MODELS), sideways_max_score=0.6, sideways_margin=0.3)
    res = signal(view, tmp_path)
    assert res.flagged.tolist() == [False, True], res.reason
    assert len(list(tmp_path.glob("detect_yunet_*.npz"))) == 3  # upright, 90 and 270 degrees
    again = signal(view, tmp_path)
    np.testing.assert_array_equal(again.score, res.score)


# ------------------------------------------------------------------------------------- real data
def _real_view(real_fer, tfds_dir):
    from ferjax.data.loading import load_splits

    splits = load_splits(str(real_fer), str(tfds_dir))
    votes = splits["train"]["ferplus_votes"]
    return curation_view(splits), votes


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_real_duplicates_match_the_known_counts(real_fer, tfds_dir):
    """GUIDE.md section 3: 1,516 groups of identical images (3,369 rows), 557 across splits, 57 with
    conflicting labels; every flagged Training row says why."""
    view, _ = _real_view(real_fer, tfds_dir)
    res = DuplicatesSignal(max_distance=0)(view)
    info = res.info
    assert (info["exact_groups"], info["exact_rows"], info["exact_cross_split_groups"],
            info["exact_conflicting_groups"]) == (1516, 3369, 557, 57)
    assert res.count == info["leaks"] + info["within_train_repeats"] + info["conflicting_train_rows"]
    assert all(r for r, f in zip(res.reason, res.flagged) if f)


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_real_test_rows_with_a_training_twin(real_fer, tfds_dir):
    """The rows `evaluate --config.training_twins=drop` and the studies' leak-free table leave out:
    PrivateTest and PublicTest images with an exact or near (<= 2 bits) duplicate in Training."""
    view, _ = _real_view(real_fer, tfds_dir)
    train = view["train"]["image"]
    assert training_twins(train, view["test"]["image"]).sum() == 357
    assert training_twins(train, view["validation"]["image"]).sum() == 345


def test_training_twins_finds_exact_and_near_copies_only():
    rng = np.random.default_rng(3)
    train = rng.integers(0, 250, (60, 48, 48, 1), dtype=np.uint8)
    other = rng.integers(0, 250, (30, 48, 48, 1), dtype=np.uint8)
    other[[2, 5]] = train[[10, 40]]  # exact copies
    other[7] = train[11] + 3  # brighter: the same DCT hash, other bytes
    np.testing.assert_array_equal(np.flatnonzero(training_twins(train, other)), [2, 5, 7])
    assert not training_twins(train[:5], train[5:]).any()


@pytest.mark.slow
def test_real_non_face_signals_against_ferplus(real_fer, tfds_dir, tmp_path):
    """The default non-face signals of curate_fer2013 on the real Training split (a YuNet pass at
    three rotations, minutes on a 2-core CPU): 155 flagged, 88 of them in the 150 FER+ NF-majority
    images (precision 56.8%, recall 58.7%; measured 2026-11-29)."""
    from ferjax.tasks.curate import run_signals

    view, votes = _real_view(real_fer, tfds_dir)
    config = cfg_lib.build("curate_fer2013", ["curation_signals=blank,text_graphics,no_face"])
    signals = run_signals(config, view, tmp_path)
    union = np.any([s.flagged for s in signals.values()], axis=0)
    truth = scoring.not_a_face(votes)
    assert truth.sum() == 150
    tp = int((union & truth).sum())
    assert tp / union.sum() >= 0.5 and tp / truth.sum() >= 0.5, (int(union.sum()), tp)


def test_bad_relabeling_settings_stop_before_any_work(two_sources, tmp_path):
    """A recipe that does not exist or a bad fold count fails at once, before data or detectors."""
    from ferjax.tasks.curate import curate

    pytest.importorskip("cleanlab", reason="the optional extra 'curate' (cleanlab) is not installed")
    src, _ = two_sources
    with pytest.raises(ValueError, match="kfold.recipe='no_such_experiment'"):
        curate(_config(src, tmp_path, "kfold.recipe=no_such_experiment"), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="kfold.folds=1"):
        curate(_config(src, tmp_path, "kfold.folds=1"), str(tmp_path / "b"))
    with pytest.raises(ValueError, match="relabel.unconfident='drop'"):
        curate(_config(src, tmp_path, "relabel.unconfident=drop"), str(tmp_path / "c"))
    with pytest.raises(ValueError, match="relabel.min_prob=1.5"):
        curate(_config(src, tmp_path, "relabel.min_prob=1.5"), str(tmp_path / "d"))
    assert not any((tmp_path / d).exists() for d in "abcd")
