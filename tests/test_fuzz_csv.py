"""Fuzzing the FER2013 CSV reader (ferjax.data.fer2013): mutated fer2013.csv (plain and gzipped, the
text or the compressed bytes mutated) and fer2013new.csv, in strict and skip_bad_rows modes. Seeds are
the first rows of the real files in ../shared/data/fer2013 when present, else synthetic rows.

The only acceptable outcomes are records or a FER2013FormatError (fuzzing.fuzz also caps memory).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from ferjax.data import fer2013 as fer
from conftest import REAL_FER, synthetic_rows, write_csv
from fuzzing import MODES, fuzz, mutated

SEED_ROWS = 3  # data rows per seed file: each FER2013 row is about 9 KB of text
EXAMPLES = 120  # per test in the quick mode (about 1 s each on the loaded 2-core VM); 10x under -m slow


def _head(data: bytes, rows: int) -> bytes:
    return b"".join(data.splitlines(keepends=True)[:rows + 1])


def _real_or_synthetic(tmp: Path) -> tuple[bytes, bytes]:
    """(fer2013.csv, fer2013new.csv) seed bytes: the header and first SEED_ROWS rows of each."""
    csv_gz, ferplus = REAL_FER / "fer2013.csv.gz", REAL_FER / fer.FERPLUS_FILE
    if csv_gz.is_file() and ferplus.is_file():
        with gzip.open(csv_gz, "rb") as f:
            head = b"".join(f.readline() for _ in range(SEED_ROWS + 1))
        return head, _head(ferplus.read_bytes(), SEED_ROWS)
    rows = synthetic_rows((SEED_ROWS, 0, 0))
    votes = [b"Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    votes += [f"Training,fer{i:07d}.png,4,0,0,1,3,2,0,0,0,0".encode() for i in range(SEED_ROWS)]
    return write_csv(tmp / "synthetic.csv", rows).read_bytes(), b"\n".join(votes) + b"\n"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, list[bytes]]:
    csv_text, ferplus = _real_or_synthetic(tmp_path_factory.mktemp("fuzz_seeds"))
    # A shorter seed too, and a CRLF one: mutations reach the header and the line ends sooner.
    csv_seeds = [csv_text, _head(csv_text, 1), csv_text.replace(b"\n", b"\r\n")]
    return {"csv": csv_seeds, "gz": [gzip.compress(s, mtime=0) for s in csv_seeds],
            "ferplus": [ferplus, _head(ferplus, 1)], "valid_csv": [csv_text]}


def _reader(folder: Path, kind: str, skip_bad_rows: bool, valid_csv: bytes):
    """parse(data): writes `data` where `kind` puts it and reads every record."""
    source = folder / ("fer2013.csv.gz" if kind.startswith("gz") else "fer2013.csv")

    def parse(data: bytes) -> None:
        if kind == "ferplus":
            source.write_bytes(valid_csv)
            (folder / fer.FERPLUS_FILE).write_bytes(data)
        elif kind == "gz_text":
            source.write_bytes(gzip.compress(data, mtime=0))
        else:  # csv, or gz_bytes: the compressed stream itself mutated
            source.write_bytes(data)
        report = fer.ReadReport(str(source))
        for rec in fer.iter_records(source, skip_bad_rows=skip_bad_rows, report=report):
            assert rec.image.shape == (48, 48, 1) and 0 <= rec.label < 7
        report.summary()

    return parse


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("skip_bad_rows", [False, True], ids=["strict", "skip_bad_rows"])
@pytest.mark.parametrize("kind", ["csv", "gz_text", "gz_bytes", "ferplus"])
def test_fer2013_reader_gives_records_or_its_own_error(tmp_path, seeds, kind, skip_bad_rows, mode):
    inputs = {"csv": "csv", "gz_text": "csv", "gz_bytes": "gz", "ferplus": "ferplus"}[kind]
    parse = _reader(tmp_path, kind, skip_bad_rows, seeds["valid_csv"][0])
    fuzz(parse, mutated(seeds[inputs]), (fer.FER2013FormatError,), mode, EXAMPLES // 2 if skip_bad_rows else EXAMPLES)


def test_seeds_are_read_without_errors(tmp_path, seeds):
    """The unmutated seeds are valid input (else the fuzzer would only exercise the first error)."""
    for kind, key in (("csv", "csv"), ("gz_bytes", "gz"), ("ferplus", "ferplus")):
        for data in seeds[key]:
            _reader(tmp_path, kind, False, seeds["valid_csv"][0])(data)
