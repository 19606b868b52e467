"""The compact FER2013 array file (`*.npz.xz`): export, the same splits as the CSV, clear errors."""
from __future__ import annotations

import io
import json
import lzma

import numpy as np
import pytest
from conftest import REAL_FER, require_files, synthetic_rows, write_csv

from ferjax.data import compact
from ferjax.data.compact import cli as compact_cli
from ferjax.data import fer2013 as fer
from ferjax.data.loading import load_splits


def _with_ferplus(folder, rows):
    """fer2013new.csv beside the CSV for `rows` (their Usage): row i gets i % 11 neutral votes and
    10 - i % 11 happiness."""
    lines = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    lines += [f"{usage},fer{i:07d}.png,{i % 11},{10 - i % 11},0,0,0,0,0,0,0,0"
              for i, (_, _, usage) in enumerate(rows)]
    (folder / fer.FERPLUS_FILE).write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def csv_and_compact(tmp_path_factory):
    """A synthetic CSV (with FER+ votes for all but the last 5 rows) and its exported compact file."""
    src = tmp_path_factory.mktemp("compact_src")
    rows = synthetic_rows((40, 12, 12), seed=3)
    write_csv(src / "fer2013.csv", rows)
    _with_ferplus(src, rows[:-5])
    out = src.parent / "compact_out" / "fer2013.npz.xz"
    assert compact_cli.main(["export", "--out", str(out), "--fer2013_path", str(src)]) == 0
    return src, out


def _assert_same_splits(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for split in a:
        assert sorted(a[split]) == sorted(b[split])
        for key in a[split]:
            assert a[split][key].dtype == b[split][key].dtype, (split, key)
            assert a[split][key].tobytes() == b[split][key].tobytes(), (split, key)


def test_compact_gives_byte_identical_splits_to_the_csv(csv_and_compact, tmp_path):
    src, out = csv_and_compact
    from_csv = load_splits(str(src), str(tmp_path / "tfds"))
    from_compact = load_splits(str(out), str(tmp_path / "tfds"))
    _assert_same_splits(from_csv, from_compact)
    assert (from_compact["train"]["ferplus_votes"][:3, 0] == [0, 1, 2]).all()
    assert (from_compact["test"]["ferplus_votes"][-5:] == -1).all()  # rows past fer2013new.csv's end
    # keyed apart in the TFDS cache: two prepared copies
    assert len(list((tmp_path / "tfds").glob("src-*"))) == 2


def test_compact_records_equal_the_csv_records(csv_and_compact):
    src, out = csv_and_compact
    a = list(fer.iter_records(src / "fer2013.csv"))
    b = list(fer.iter_records(fer.find_source(out)))
    assert [(r.row, r.split, r.label) for r in a] == [(r.row, r.split, r.label) for r in b]
    assert all(np.array_equal(x.image, y.image) and x.image.shape == y.image.shape for x, y in zip(a, b))
    assert fer.source_files(out) == [out]


def test_compact_file_is_found_in_a_folder_and_described(csv_and_compact, capsys):
    _, out = csv_and_compact
    assert fer.find_source(out.parent) == out
    assert compact_cli.main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 64 and (info["train"], info["validation"], info["test"]) == (40, 12, 12)
    assert info["ferplus_votes"] is True
    # an xz stream holding a plain .npz: `xz -d` gives a file numpy reads
    with np.load(io.BytesIO(lzma.decompress(out.read_bytes()))) as npz:
        assert npz["image"].shape == (64, 48, 48)


def test_without_ferplus_votes_the_file_has_none(tmp_path):
    write_csv(tmp_path / "src" / "fer2013.csv", synthetic_rows((7, 2, 2)))
    out = tmp_path / "a.npz.xz"
    assert compact_cli.main(["export", "--out", str(out), "--fer2013_path", str(tmp_path / "src")]) == 0
    assert "ferplus_votes" not in compact.read(out)
    assert all(r.ferplus_votes is None for r in compact.iter_records(out))


def _npz_xz(path, **arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(lzma.compress(buf.getvalue()))
    return path


def _good_arrays(n=3):
    return {"image": np.zeros((n, 48, 48), np.uint8), "label": np.arange(n, dtype=np.uint8),
            "split": np.zeros(n, np.uint8), "row": np.arange(n, dtype=np.int64),
            "meta": np.array(json.dumps({"format": compact.FORMAT, "version": compact.VERSION,
                                         "splits": list(fer.SPLITS), "emotions": list(fer.EMOTIONS)}))}


@pytest.mark.parametrize("change, message", [
    ({"label": np.array([0, 1, 7], np.uint8)}, "label 7 at index 2 is out of range 0..6"),
    ({"split": np.array([0, 3, 0], np.uint8)}, "split 3 at index 1 is out of range 0..2"),
    ({"image": np.zeros((3, 48, 47), np.uint8)}, "array 'image' is uint8 (3, 48, 47); expected uint8 (3, 48, 48)"),
    ({"label": np.zeros(3, np.int64)}, "array 'label' is int64 (3,); expected uint8 (3,)"),
    ({"row": np.array([0, 1, 1])}, "'row' must hold distinct source rows"),
    ({"ferplus_votes": np.zeros((3, 8), np.int16)}, "array 'ferplus_votes' is int16 (3, 8)"),
    ({"meta": np.array('{"format": "other"}')}, "'meta' lacks format='ferjax-fer2013-compact'"),
    ({"meta": np.array("not json")}, "'meta' is not JSON"),
])
def test_bad_arrays_name_the_file_and_what_was_expected(tmp_path, change, message):
    path = _npz_xz(tmp_path / "bad.npz.xz", **{**_good_arrays(), **change})
    with pytest.raises(compact.CompactFormatError, match=None) as e:
        compact.read(path)
    assert str(path) in str(e.value) and message in str(e.value), str(e.value)


def test_missing_arrays_truncated_and_foreign_files(tmp_path, csv_and_compact):
    arrays = _good_arrays()
    del arrays["row"]
    with pytest.raises(compact.CompactFormatError, match=r"arrays \['row'\] missing"):
        compact.read(_npz_xz(tmp_path / "norow.npz.xz", **arrays))
    _, good = csv_and_compact
    cut = tmp_path / "cut.npz.xz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(compact.CompactFormatError, match="xz stream truncated or corrupt"):
        list(fer.iter_records(cut))
    plain = tmp_path / "plain.npz.xz"
    plain.write_bytes(b"emotion,pixels,Usage\n")
    with pytest.raises(compact.CompactFormatError, match=f"{plain}.*xz stream truncated or corrupt"):
        compact.read(plain)
    notnpz = tmp_path / "notnpz.npz.xz"
    notnpz.write_bytes(lzma.compress(b"hello"))
    with pytest.raises(compact.CompactFormatError, match="holds no readable .npz"):
        compact.read(notnpz)
    newer = _good_arrays()
    newer["meta"] = np.array(json.dumps({"format": compact.FORMAT, "version": 99}))
    with pytest.raises(compact.CompactFormatError, match="version 99; this ferjax reads version 1"):
        compact.read(_npz_xz(tmp_path / "v99.npz.xz", **newer))


def test_export_refuses_bad_names_and_keeps_the_old_file_on_failure(tmp_path, csv_and_compact, capsys):
    src, good = csv_and_compact
    with pytest.raises(SystemExit):
        compact_cli.main(["export", "--out", str(tmp_path / "x.npz"), "--fer2013_path", str(src)])
    assert "must end with .npz.xz" in capsys.readouterr().err
    # a CSV with a bad row: the export fails, naming the row, and the existing file stays whole
    out = tmp_path / "keep.npz.xz"
    out.write_bytes(good.read_bytes())
    bad = tmp_path / "bad" / "fer2013.csv"
    bad.parent.mkdir()
    bad.write_text("emotion,pixels,Usage\n9,1 2,Training\n")
    assert compact_cli.main(["export", "--out", str(out), "--fer2013_path", str(bad)]) == 1
    assert "row 0 (line 2)" in capsys.readouterr().err
    assert out.read_bytes() == good.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keep")] == []


@pytest.mark.slow
def test_real_fer2013_compact_matches_the_csv(tmp_path):
    """The whole Kaggle CSV (+ FER+ votes) exported and read back: the same split arrays, byte for byte."""
    require_files(REAL_FER / "fer2013.csv.gz", REAL_FER / fer.FERPLUS_FILE, why="real FER2013 and FER+ votes")
    out = tmp_path / "fer2013.npz.xz"
    assert compact_cli.main(["export", "--out", str(out), "--fer2013_path", str(REAL_FER / "fer2013.csv.gz")]) == 0
    assert out.stat().st_size < 60 * 2 ** 20
    _assert_same_splits(load_splits(str(REAL_FER), str(tmp_path / "tfds")),
                        load_splits(str(out), str(tmp_path / "tfds")))
