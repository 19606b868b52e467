"""FER2013 reading: CSV (plain, gzip), image folders, FER+ join, malformed input, TFDS builder."""
import os

import cv2
import numpy as np
import pytest

from ferjax.data import fer2013 as fer
from ferjax.data.loading import load_splits
from ferjax.data.pipeline import TrainBatches, eval_batches
from conftest import synthetic_rows, write_csv


def test_csv_and_gzip_give_same_records(tmp_path):
    rows = synthetic_rows((14, 7, 7))
    a = list(fer.iter_records(write_csv(tmp_path / "a" / "fer2013.csv", rows)))
    b = list(fer.iter_records(write_csv(tmp_path / "b" / "fer2013.csv.gz", rows, gz=True)))
    assert len(a) == len(b) == 28
    for ra, rb, (label, img, usage) in zip(a, b, rows):
        assert ra.row == rb.row and ra.label == rb.label == label
        assert ra.split == fer.USAGE_TO_SPLIT[usage]
        np.testing.assert_array_equal(ra.image[..., 0], img)
        np.testing.assert_array_equal(ra.image, rb.image)


def _bad(rows, row, line):
    lines = ["emotion,pixels,Usage"] + [
        f"{lab},{' '.join(map(str, img.reshape(-1)))},{usage}" for lab, img, usage in rows]
    lines[row + 1] = line
    return "\n".join(lines) + "\n"


PIX = " ".join(["7"] * 2304)


@pytest.mark.parametrize("line, problem", [
    ("3," + " ".join(["7"] * 2303) + ",Training", "expected 2304 pixel values, got 2303"),
    ("3," + PIX.replace("7", "x7", 1) + ",Training", "pixel value 'x7' is not an integer"),
    ("9," + PIX + ",Training", "emotion 9 is out of range"),
    ("3," + PIX + ",Validation", "unknown Usage 'Validation'"),
    ("3," + " ".join(["300"] * 2304) + ",Training", "must be 0..255"),
])
def test_malformed_row_names_row_and_problem(tmp_path, line, problem):
    rows = synthetic_rows((6, 2, 2))
    path = tmp_path / "fer2013.csv"
    path.write_text(_bad(rows, 4, line))
    with pytest.raises(fer.FER2013FormatError) as e:
        list(fer.iter_records(path))
    msg = str(e.value)
    assert "row 4" in msg and problem in msg and str(path) in msg


def test_skip_bad_rows_counts_and_reports(tmp_path):
    rows = synthetic_rows((6, 2, 2))
    path = tmp_path / "fer2013.csv"
    path.write_text(_bad(rows, 4, "9," + PIX + ",Training"))
    report = fer.ReadReport(str(path))
    records = list(fer.iter_records(path, skip_bad_rows=True, report=report))
    assert len(records) == 9 and report.rows_read == 9
    assert report.bad_rows[0][0] == 4 and "1 skipped" in report.summary()


def test_truncated_gzip(tmp_path):
    path = write_csv(tmp_path / "fer2013.csv.gz", synthetic_rows((20, 5, 5)), gz=True)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(fer.FER2013FormatError, match="truncated or corrupt"):
        list(fer.iter_records(path))


def test_wrong_header(tmp_path):
    path = write_csv(tmp_path / "fer2013.csv", synthetic_rows((2, 1, 1)), header="label,img,split")
    with pytest.raises(fer.FER2013FormatError, match="expected the header"):
        list(fer.iter_records(path))


def test_ferplus_votes_joined(tmp_path):
    rows = synthetic_rows((3, 1, 1))
    write_csv(tmp_path / "fer2013.csv", rows)
    votes = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    for i, (_, _, usage) in enumerate(rows):
        votes.append(f"{usage},fer{i:07d}.png,{i},10,0,0,0,0,0,0,0,0")
    (tmp_path / "fer2013new.csv").write_text("\n".join(votes) + "\n")
    recs = list(fer.iter_records(tmp_path / "fer2013.csv"))
    assert [int(r.ferplus_votes[0]) for r in recs] == [0, 1, 2, 3, 4]


def test_image_folder_layout(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("happy", "sad"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for k in range(2):
                cv2.imwrite(str(d / f"{k}.png"), rng.integers(0, 255, (48, 48), dtype=np.uint8))
    recs = list(fer.iter_records(fer.find_source(tmp_path)))
    assert len(recs) == 8
    assert {r.split for r in recs} == {"train", "test"}
    assert {fer.EMOTIONS[r.label] for r in recs} == {"happy", "sad"}
    (tmp_path / "train" / "happy" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(fer.FER2013FormatError, match="broken.png"):
        list(fer.iter_records(tmp_path))


def test_builder_prepares_array_record_and_loads(synthetic_csv, tfds_dir):
    splits = load_splits(str(synthetic_csv), str(tfds_dir))
    assert {k: len(v["label"]) for k, v in splits.items()} == {"train": 160, "validation": 64, "test": 64}
    assert splits["validation"]["row"][0] == 160
    assert list(tfds_dir.rglob("*.array_record*"))
    rows = synthetic_rows()
    np.testing.assert_array_equal(splits["test"]["image"][3, ..., 0], rows[160 + 64 + 3][1])


def test_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="kaggle.com"):
        fer.find_source(tmp_path / "nothing")


def test_train_batches_resume_exactly():
    arrays = {"x": np.arange(100)}
    batches = TrainBatches(arrays, 10, seed=3)
    it = batches.iterate(0)
    first = [next(it)["x"] for _ in range(25)]
    resumed = batches.iterate(13)
    for k in range(13, 25):
        np.testing.assert_array_equal(next(resumed)["x"], first[k])
    assert sorted(np.concatenate(first[:10]).tolist()) == list(range(100))  # one epoch = a permutation
    assert not np.array_equal(np.concatenate(first[:10]), np.concatenate(first[10:20]))


def test_eval_batches_pad_with_mask():
    out = list(eval_batches({"x": np.arange(25)}, 10))
    assert [b["mask"].sum() for b in out] == [10, 10, 5]
    assert out[-1]["x"].shape == (10,)


def test_real_fer2013_counts(real_fer, tfds_dir):
    splits = load_splits(str(real_fer), str(tfds_dir))
    counts = {k: np.bincount(v["label"], minlength=7).tolist() for k, v in splits.items()}
    assert counts == {"train": [3995, 436, 4097, 7215, 4830, 3171, 4965],
                      "validation": [467, 56, 496, 895, 653, 415, 607],
                      "test": [491, 55, 528, 879, 594, 416, 626]}
    assert splits["train"]["image"][0, 0, :8, 0].tolist() == [70, 80, 82, 72, 58, 58, 60, 63]
    assert splits["test"]["row"][0] == 32298
    assert (splits["train"]["ferplus_votes"][5274] == -1).all()


def test_ferplus_majority_labels():
    from ferjax.data.ferplus import ferplus_majority

    votes = np.array([
        [0, 9, 1, 0, 0, 0, 0, 0, 0, 0],   # happiness -> FER happy (3)
        [5, 0, 0, 0, 5, 0, 0, 0, 0, 0],   # tie neutral/anger -> dropped
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face -> dropped
        [0, 0, 0, 0, 0, 0, 0, 8, 2, 0],   # contempt has no FER2013 class -> dropped
        [1, 0, 0, 0, 0, 6, 3, 0, 0, 0],   # disgust -> 1
        [-1] * 10,                          # votes belong to another image -> dropped
        [2, 0, 0, 0, 0, 0, 0, 0, 3, 5],   # NF outvotes every emotion -> dropped
    ], np.int16)
    assert ferplus_majority(votes).tolist() == [3, -1, -1, -1, 1, -1, -1]


def test_real_ferplus_agreement(real_fer, tfds_dir):
    """About 65% of Training rows keep their label under the FER+ majority (GUIDE.md §3)."""
    from ferjax.data.ferplus import ferplus_majority

    train = load_splits(str(real_fer), str(tfds_dir), splits=("train",))["train"]
    major = ferplus_majority(train["ferplus_votes"])
    kept = major >= 0
    agree = float((major[kept] == train["label"][kept]).mean())
    assert 0.6 < agree < 0.7, agree


def _ferplus_csv(path, rows, neutral_votes=10):
    """fer2013new.csv for `rows` (their Usage, row by row)."""
    lines = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    lines += [f"{usage},fer{i:07d}.png,{neutral_votes},0,0,0,0,0,0,0,0,0" for i, (_, _, usage) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")


def test_cache_rebuilds_when_ferplus_votes_appear(tmp_path):
    """fer2013new.csv placed beside the CSV after the first build is read (it was ignored)."""
    rows = synthetic_rows((14, 7, 7))
    write_csv(tmp_path / "src" / "fer2013.csv", rows)
    before = load_splits(str(tmp_path / "src"), str(tmp_path / "tfds"))
    assert (before["train"]["ferplus_votes"] == -1).all()
    _ferplus_csv(tmp_path / "src" / "fer2013new.csv", rows)
    after = load_splits(str(tmp_path / "src"), str(tmp_path / "tfds"))
    assert (after["train"]["ferplus_votes"][:, 0] == 10).all()


def test_cache_rebuilds_when_content_changes_with_same_size_and_mtime(tmp_path):
    """The key is the content: a relabelled row with the same size and mtime rebuilds."""
    path = write_csv(tmp_path / "fer2013.csv", synthetic_rows((14, 7, 7)))
    first = load_splits(str(path), str(tmp_path / "tfds"))
    st = path.stat()
    data = path.read_bytes()
    header_end = data.index(b"\n") + 1
    assert data[header_end:header_end + 2] == b"0,"  # row 0 has label 0
    path.write_bytes(data[:header_end] + b"1" + data[header_end + 1:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    second = load_splits(str(path), str(tmp_path / "tfds"))
    assert first["train"]["label"][0] == 0 and second["train"]["label"][0] == 1


def test_builder_reads_exactly_the_given_file(tmp_path):
    """fer2013_path=fer2013.csv.gz reads the gz even when a different fer2013.csv sits beside it."""
    write_csv(tmp_path / "fer2013.csv.gz", synthetic_rows((14, 7, 7)), gz=True)
    write_csv(tmp_path / "fer2013.csv", synthetic_rows((21, 7, 7), seed=1))
    from_gz = load_splits(str(tmp_path / "fer2013.csv.gz"), str(tmp_path / "tfds"))
    from_csv = load_splits(str(tmp_path / "fer2013.csv"), str(tmp_path / "tfds"))
    assert len(from_gz["train"]["label"]) == 14 and len(from_csv["train"]["label"]) == 21


def _image_tree(root, splits=("train", "test"), per_class=20):
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in ("happy", "sad", "neutral"):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(per_class):
                cv2.imwrite(str(d / f"{k:03d}.png"), rng.integers(0, 255, (48, 48), dtype=np.uint8))


def test_image_folder_without_validation_gets_a_seeded_split_from_train(tmp_path):
    _image_tree(tmp_path / "imgs", per_class=40)
    splits = load_splits(str(tmp_path / "imgs"), str(tmp_path / "tfds"))
    n = {k: len(v["label"]) for k, v in splits.items()}
    assert n["test"] == 120 and n["train"] + n["validation"] == 120
    assert 4 <= n["validation"] <= 24  # ~10% of 120
    assert set(splits["validation"]["label"]) <= {3, 4, 6}
    def moved(root):
        return [p.relative_to(root).as_posix() for s, _, p in fer.folder_images(root) if s == "validation"]

    _image_tree(tmp_path / "elsewhere" / "copy", per_class=40)
    assert moved(tmp_path / "imgs") == moved(tmp_path / "elsewhere" / "copy")  # same files anywhere
    assert len(moved(tmp_path / "imgs")) == n["validation"]
    assert all(p.startswith("train/") for p in moved(tmp_path / "imgs"))
    # With a validation folder nothing is carved.
    _image_tree(tmp_path / "imgs2", splits=("train", "val", "test"), per_class=2)
    assert {s for s, _, _ in fer.folder_images(tmp_path / "imgs2")} == {"train", "validation", "test"}
    assert sum(s == "train" for s, _, _ in fer.folder_images(tmp_path / "imgs2")) == 6


def test_cache_rebuilds_when_images_are_added(tmp_path):
    _image_tree(tmp_path / "imgs", per_class=3)
    first = load_splits(str(tmp_path / "imgs"), str(tmp_path / "tfds"))
    cv2.imwrite(str(tmp_path / "imgs" / "test" / "sad" / "new.png"), np.zeros((48, 48), np.uint8))
    second = load_splits(str(tmp_path / "imgs"), str(tmp_path / "tfds"))
    assert len(second["test"]["label"]) == len(first["test"]["label"]) + 1


# Hostile or damaged CSV files (issue 37, item 16): every problem is a FER2013FormatError naming
# the file and the row, and with skip_bad_rows one bad line is one skipped row.
def _lines(rows) -> list[bytes]:
    return [b"emotion,pixels,Usage"] + [f"{lab},{' '.join(map(str, img.reshape(-1)))},{usage}".encode()
                                        for lab, img, usage in rows]


def _write(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("damage, problem", [
    (lambda line: line + b"9" * 140_000, "line longer than 131072 bytes"),  # was _csv.Error: field larger than field limit
    (lambda line: line[:10] + b"\xff\xfe" + line[12:], "not UTF-8 text"),  # was UnicodeDecodeError, no file or row
    (lambda line: line.replace(b",", b',"', 1), "unterminated quote"),  # swallowed every row after it
])
def test_damaged_line_is_one_bad_row_named_by_file_and_line(tmp_path, damage, problem):
    rows = synthetic_rows((6, 2, 2))
    lines = _lines(rows)
    lines[4] = damage(lines[4])  # row 3, line 5
    path = _write(tmp_path / "fer2013.csv", lines)
    with pytest.raises(fer.FER2013FormatError) as e:
        list(fer.iter_records(path))
    assert f"{path}, row 3 (line 5): " in str(e.value) and problem in str(e.value)
    report = fer.ReadReport(str(path))
    records = list(fer.iter_records(path, skip_bad_rows=True, report=report))
    assert [r.row for r in records] == [r for r in range(10) if r != 3]  # the rows after it are read
    assert report.rows_read == 9 and len(report.bad_rows) == 1 and report.bad_rows[0][0] == 3
    assert "line 5" in report.bad_rows[0][1] and problem in report.bad_rows[0][1]


def test_gzipped_long_line_and_bad_bytes_skipped(tmp_path):
    import gzip

    rows = synthetic_rows((6, 2, 2))
    lines = _lines(rows)
    lines[2] += b" 1" * 300_000
    lines[6] = b"\x80" + lines[6]
    path = tmp_path / "fer2013.csv.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    report = fer.ReadReport(str(path))
    assert len(list(fer.iter_records(path, skip_bad_rows=True, report=report))) == 8
    assert [r for r, _ in report.bad_rows] == [1, 5]


def test_utf8_bom_header_accepted(tmp_path):
    rows = synthetic_rows((3, 1, 1))
    lines = _lines(rows)
    lines[0] = b"\xef\xbb\xbf" + lines[0]
    assert len(list(fer.iter_records(_write(tmp_path / "fer2013.csv", lines)))) == 5


def test_empty_and_undecodable_headers_name_the_file(tmp_path):
    for data in (b"", b"\xff\xfeemotion,pixels,Usage\n"):
        path = tmp_path / "fer2013.csv"
        path.write_bytes(data)
        with pytest.raises(fer.FER2013FormatError, match=f"{path}, line 1: expected the header"):
            list(fer.iter_records(path))


def _ferplus(path, usages, extra: dict | None = None):
    lines = [b"Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    lines += [f"{u},fer{i:07d}.png,1,9,0,0,0,0,0,0,0,0".encode() for i, u in enumerate(usages)]
    for i, line in (extra or {}).items():
        lines[i + 1] = line
    path.write_bytes(b"\n".join(lines) + b"\n" if usages or extra else b"")


@pytest.mark.parametrize("usages, extra, message", [
    ([], None, r"line 1: expected the FER\+ header"),  # was "generator raised StopIteration"
    (None, {2: b"Training,fer0000002.png,1,9,0"}, r"row 2 \(line 4\): expected 12 fields"),  # was a numpy error
    (None, {1: b"Training,fer0000001.png,1,9,0,0,0,0,0,0,0,\xff"}, r"row 1 \(line 3\): not UTF-8"),
    (None, {0: b"Training,fer0000000.png,1,99999,0,0,0,0,0,0,0,0"}, r"row 0 \(line 2\): vote counts must be 0"),
    (["Training"] * 3 + ["Training"] + ["PrivateTest"], None,  # row 3 is PublicTest in fer2013.csv
     r"fer2013new.csv, row 3 \(line 5\): Usage 'Training' differs from fer2013.csv's 'PublicTest'"),
])
def test_ferplus_file_problems_name_the_file_and_row(tmp_path, usages, extra, message):
    rows = synthetic_rows((3, 1, 1))  # Training x3, PublicTest, PrivateTest
    path = write_csv(tmp_path / "fer2013.csv", rows)
    _ferplus(tmp_path / "fer2013new.csv", [u for _, _, u in rows] if usages is None else usages, extra)
    for skip in (False, True):
        with pytest.raises(fer.FER2013FormatError, match=message) as e:
            list(fer.iter_records(path, skip_bad_rows=skip))
        assert str(tmp_path / "fer2013new.csv") in str(e.value)


def test_pixel_values_numpy_cannot_hold_are_bad_rows(tmp_path):
    rows = synthetic_rows((3, 1, 1))
    lines = _lines(rows)
    lines[1] = b"0," + b" ".join([b"99999999999"] + [b"7"] * 2303) + b",Training"  # was an OverflowError
    lines[2] = b"0," + " ".join(["\u00b2"] + ["7"] * 2303).encode() + b",Training"  # was StopIteration
    path = _write(tmp_path / "fer2013.csv", lines)
    report = fer.ReadReport(str(path))
    assert len(list(fer.iter_records(path, skip_bad_rows=True, report=report))) == 3
    assert [r for r, _ in report.bad_rows] == [0, 1]
    assert "not an integer in 0..255" in report.bad_rows[0][1]
