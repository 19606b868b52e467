"""`python -m ferjax.convert FORMAT --in FILE --out FILE.msgpack`: convert published weights."""
from __future__ import annotations

import argparse
import json
import sys

from ferjax.convert import FORMATS, ConversionError, convert_file
from ferjax.convert.safe_pickle import UnsafePickleError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ferjax convert", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert published weights to a ferjax msgpack + JSON model card.",
        epilog="formats:\n" + "\n".join(f"  {k:18s} {v.help}" for k, v in FORMATS.items()))
    parser.add_argument("format", choices=sorted(FORMATS), metavar="FORMAT", help="input format (see below)")
    parser.add_argument("--in", dest="src", required=True, help="published weight file")
    parser.add_argument("--out", required=True, help="output .msgpack (the card is written beside it as .json)")
    args = parser.parse_args(argv)
    try:
        card = convert_file(args.format, args.src, args.out)
    except (ConversionError, UnsafePickleError, OSError) as e:  # refused or unreadable input, unwritable output
        print("error: " + str(e).replace("\n", " "), file=sys.stderr)
        return 2
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
