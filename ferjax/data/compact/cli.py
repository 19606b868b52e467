"""`ferjax compact export|info` (also `python -m ferjax.data.compact`): write a FER2013 source as one compact file, or check one."""
from __future__ import annotations

import argparse
import json
import sys

from ferjax.data import fer2013 as fer
from ferjax.data.compact import SUFFIX, is_compact, summary, write


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ferjax compact", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write a FER2013 source (CSV, .csv.gz, image folder) as FILE.npz.xz")
    ex.add_argument("--out", required=True, help=f"output file (name ending {SUFFIX})")
    ex.add_argument("--fer2013-path", "--fer2013_path", dest="fer2013_path", default=None,
                    help="FER2013 source (default: $FER2013_PATH, else TFDS's manual folder); FER+ "
                         "votes come from fer2013new.csv beside a CSV")
    ex.add_argument("--skip-bad-rows", "--skip_bad_rows", dest="skip_bad_rows", action="store_true", help="skip malformed rows (counted) instead of stopping")
    info = sub.add_parser("info", help="check a compact file and print its rows per split")
    info.add_argument("file")
    args = p.parse_args(argv)
    try:
        if args.cmd == "info":
            print(json.dumps(summary(args.file)))
            return 0
        if not is_compact(args.out):
            p.error(f"--out {args.out}: the name must end with {SUFFIX}")
        from ferjax.data.loading import resolve_source  # noqa: PLC0415  (imports TFDS)

        source = resolve_source(args.fer2013_path)
        if is_compact(source):
            p.error(f"{source} is already a compact file")
        report = fer.ReadReport(str(source))
        write(args.out, fer.iter_records(source, args.skip_bad_rows, report), source.name)
        if report.bad_rows:
            print(report.summary(), file=sys.stderr)
        print(json.dumps(summary(args.out)))
        return 0
    except (FileNotFoundError, fer.FER2013FormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
