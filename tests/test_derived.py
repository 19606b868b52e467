"""Derived datasets: round trip, provenance, untouched validation/test, atomic writes, flattening."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from conftest import REPO, synthetic_rows, write_csv
from ferjax.data import derived
from ferjax.data.derived import DerivedBuilder, DerivedDatasetError
from ferjax.registry import DATASETS


def _cfg(source, tfds_dir, derived_dir="") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"fer2013_path": str(source), "tfds_data_dir": str(tfds_dir),
                                      "skip_bad_rows": False, "limit_per_split": 0,
                                      "derived_dir": str(derived_dir)})


def _edited(cfg) -> DerivedBuilder:
    """Row 0 removed, row 1 (disgust) relabeled happy, two generated disgust images made from
    neutral rows 6 and 13, with score columns."""
    b = DerivedBuilder("fer2013", cfg)
    b.remove(0, "not a face", scores={"nf_prob": 0.93})
    b.relabel(1, "happy", "CNN ensemble", scores={"agreement": 0.8})
    rng = np.random.default_rng(0)
    b.add(rng.integers(0, 256, (2, 48, 48, 1), dtype=np.uint8), ["disgust", "disgust"],
          source="generated", base_rows=[6, 13], reason="cyclegan", generator_checkpoint="/ckpt/g",
          scores={"kid_feature_dist": [0.5, 0.25]})
    return b


@pytest.fixture(scope="module")
def written(synthetic_csv, tfds_dir, tmp_path_factory):
    cfg = _cfg(synthetic_csv, tfds_dir)
    b = _edited(cfg)
    out = b.write(tmp_path_factory.mktemp("derived") / "set", command="test command")
    return cfg, b, out


def test_round_trip_applies_edits_to_train_only(written):
    cfg, builder, out = written
    base = DATASETS.create("fer2013", cfg=cfg, protocol="original")
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.derived_dir = str(out)
    data = DATASETS.create("derived", cfg=cfg, protocol="original")
    train, btrain = data["train"], base["train"]
    assert len(train["label"]) == len(btrain["label"]) - 1 + 2
    assert 0 not in train["row"][:-2] and list(train["row"][-2:]) == [-1, -1]
    np.testing.assert_array_equal(train["image"][:-2], btrain["image"][1:])
    assert train["label"][0] == 3 and btrain["label"][1] == 1  # row 1: disgust -> happy
    np.testing.assert_array_equal(train["label"][1:-2], btrain["label"][2:])
    np.testing.assert_array_equal(train["image"][-2:], builder._added_array())
    assert list(train["label"][-2:]) == [1, 1] and (train["ferplus_votes"][-2:] == -1).all()
    for split in ("validation", "test"):  # the same arrays, byte for byte
        assert data[split].keys() == base[split].keys()
        for key, arr in base[split].items():
            assert data[split][key].dtype == arr.dtype and data[split][key].tobytes() == arr.tobytes()


def test_provenance_and_manifest(written):
    _, _, out = written
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base"]["dataset"] == "fer2013" and manifest["base"]["protocol"] == "original"
    assert "derived_dir" not in manifest["base"]["data"] and manifest["command"] == "test command"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # an ordinary folder, not mkdtemp's 0700
    counts = manifest["counts"]
    assert (counts["base_train"], counts["kept"], counts["relabeled"], counts["removed"],
            counts["added"], counts["train"]) == (160, 158, 1, 1, 2, 161)
    assert counts["train_per_class_before"]["disgust"] == 23
    assert counts["train_per_class_after"]["disgust"] == 23 - 1 + 2
    with open(out / "provenance.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 162
    removed, relabeled, kept = lines[0], lines[1], lines[2]
    assert (removed["action"], removed["base_row"], removed["train_index"], removed["score_nf_prob"]) == (
        "removed", "0", "-1", "0.93")
    assert (relabeled["action"], relabeled["original_label"], relabeled["label"], relabeled["reason"]) == (
        "relabeled", "disgust", "happy", "CNN ensemble")
    assert (kept["action"], kept["source"], kept["train_index"], kept["score_nf_prob"]) == ("kept", "original", "1", "")
    gen = lines[-2:]
    assert [g["source"] for g in gen] == ["generated"] * 2 and [g["action"] for g in gen] == ["added"] * 2
    assert [g["base_row"] for g in gen] == ["6", "13"] and [g["original_label"] for g in gen] == ["neutral"] * 2
    assert [g["label"] for g in gen] == ["disgust"] * 2 and gen[0]["generator_checkpoint"] == "/ckpt/g"
    assert [g["added_index"] for g in gen] == ["0", "1"] and [g["train_index"] for g in gen] == ["159", "160"]
    assert gen[1]["score_kid_feature_dist"] == "0.25"


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_real_data_validation_and_test_byte_identical(real_fer, tfds_dir, tmp_path):
    """On the real FER2013: a derived set with one edit of each kind leaves PublicTest and
    PrivateTest byte-identical to the base (prepared once per session in `tfds_dir`, shared with
    test_data)."""
    cfg = _cfg(real_fer, tfds_dir)
    b = DerivedBuilder("fer2013", cfg)
    b.remove(0, "test")
    b.relabel(2, "disgust", "test")
    b.add(b.base_splits["train"]["image"][:1], ["disgust"], source="original", base_rows=[3], reason="copy")
    cfg.derived_dir = str(b.write(tmp_path / "set", "test"))
    data = DATASETS.create("derived", cfg=cfg, protocol="original")
    for split in ("validation", "test"):
        for key, arr in b.base_splits[split].items():
            assert data[split][key].dtype == arr.dtype and data[split][key].tobytes() == arr.tobytes()
    assert len(data["train"]["label"]) == 28709 and len(data["validation"]["label"]) == 3589


def test_incomplete_or_changed_folder_is_refused(written, tmp_path):
    cfg, _, out = written
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.derived_dir = str(copy)
    with open(copy / "provenance.csv", "a") as f:
        f.write("999,original,kept,999,,angry,angry,,,-1,,,\n")
    with pytest.raises(DerivedDatasetError, match=r"provenance.csv is missing or changed"):
        DATASETS.create("derived", cfg=cfg, protocol="original")
    (copy / "manifest.json").unlink()
    with pytest.raises(DerivedDatasetError, match=r"not a complete derived dataset: manifest.json"):
        DATASETS.create("derived", cfg=cfg, protocol="original")
    cfg.derived_dir = str(tmp_path / "nowhere")
    with pytest.raises(DerivedDatasetError, match="does not exist"):
        DATASETS.create("derived", cfg=cfg, protocol="original")
    cfg.derived_dir = ""
    with pytest.raises(DerivedDatasetError, match="needs --config.data.derived_dir"):
        DATASETS.create("derived", cfg=cfg, protocol="original")


def test_failure_mid_write_leaves_no_complete_looking_folder(synthetic_csv, tfds_dir, tmp_path,
                                                             monkeypatch):
    """A full disk while writing provenance: nothing under the final name, no temp folder left."""
    b = _edited(_cfg(synthetic_csv, tfds_dir))

    def disk_full(self, path, entries):
        path.write_text("train_index,source\n0,orig")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DerivedBuilder, "_write_provenance", disk_full)
    with pytest.raises(OSError, match="No space left"):
        b.write(tmp_path / "set", "test")
    assert list(tmp_path.iterdir()) == []


def test_kill_mid_write_leaves_only_a_refused_temp_folder(synthetic_csv, tfds_dir, tmp_path):
    """A process killed while writing (os._exit, no cleanup) leaves a hidden temp folder without
    a manifest; the final name never appears, and the temp folder is refused when loaded."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        import ml_collections
        from ferjax.data.derived import DerivedBuilder
        cfg = ml_collections.ConfigDict({_cfg(synthetic_csv, tfds_dir).to_dict()!r})
        b = DerivedBuilder("fer2013", cfg)
        b.remove(0, "x")
        def killed(self, path, entries):
            path.write_text("train_index")
            os._exit(9)
        DerivedBuilder._write_provenance = killed
        b.write({str(tmp_path / 'set')!r}, "test")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    left = list(tmp_path.iterdir())
    assert not (tmp_path / "set").exists() and len(left) == 1 and left[0].name.startswith(".set.tmp-")
    assert not (left[0] / "manifest.json").exists()
    cfg = _cfg(synthetic_csv, tfds_dir, left[0])
    with pytest.raises(DerivedDatasetError, match="manifest.json .written last. is missing"):
        DATASETS.create("derived", cfg=cfg, protocol="original")


def test_existing_folder_is_not_overwritten_unless_asked(written, synthetic_csv, tfds_dir):
    _, builder, out = written
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        builder.write(out, "again")
    assert (out / "manifest.json").read_bytes() == before


def test_derived_base_is_flattened(written, tmp_path):
    """Balancing a curated set: a builder on a derived base keeps its entries, names the root
    base and the earlier command, and its folder loads with both sets of edits."""
    cfg, _, out = written
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.derived_dir = str(out)
    b = DerivedBuilder("derived", cfg)
    b.remove(2, "second pass")
    with pytest.raises(DerivedDatasetError, match="already has label 'angry'"):
        b.relabel(7, "angry", "same label")
    with pytest.raises(DerivedDatasetError, match="row 5000 is not in the base Training split"):
        b.remove(5000, "no such row")
    second = b.write(tmp_path / "second", "second command")
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["base"]["dataset"] == "fer2013" and manifest["history"] == ["test command"]
    assert manifest["counts"]["removed"] == 2 and manifest["counts"]["added"] == 2
    cfg.derived_dir = str(second)
    train = DATASETS.create("derived", cfg=cfg, protocol="original")["train"]
    assert len(train["label"]) == 160 and not {0, 2} & set(train["row"].tolist())


def test_other_base_data_or_protocol_is_refused(written, tmp_path):
    cfg, _, out = written
    other = write_csv(tmp_path / "other" / "fer2013.csv", synthetic_rows(seed=1)).parent
    bad = _cfg(other, tmp_path / "tfds", out)
    with pytest.raises(DerivedDatasetError, match="point --config.data.fer2013_path at the same source"):
        DATASETS.create("derived", cfg=bad, protocol="original")
    with pytest.raises(DerivedDatasetError, match="set --config.protocol=original"):
        derived.load(_cfg(cfg.fer2013_path, cfg.tfds_data_dir, out), protocol="ferplus")


def test_image_folder_base_records_file_paths(tmp_path):
    """For image-folder data the provenance names each example's file beside its row."""
    import cv2

    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for name in ("angry", "neutral"):
            (tmp_path / "fer" / split / name).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(tmp_path / "fer" / split / name / f"{i}.png"),
                            rng.integers(0, 256, (48, 48), dtype=np.uint8))
    b = DerivedBuilder("fer2013", _cfg(tmp_path / "fer", tmp_path / "tfds"))
    rows = b.base_splits["train"]["row"].tolist()
    b.add(b.base_splits["train"]["image"][-1:], ["disgust"], source="generated", base_rows=rows[-1:],
          reason="test")
    out = b.write(tmp_path / "set", "test")
    with open(out / "provenance.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert [ln["base_path"] for ln in lines] == ["train/angry/0.png", "train/angry/1.png",
                                                 "train/neutral/0.png", "train/neutral/1.png",
                                                 "train/neutral/1.png"]
    assert lines[-1]["action"] == "added" and lines[-1]["base_row"] == str(rows[-1])
