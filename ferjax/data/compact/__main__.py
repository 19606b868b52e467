"""`python -m ferjax.data.compact`: the compact-file command (`ferjax.data.compact.cli`)."""
import sys

from ferjax.data.compact.cli import main

sys.exit(main())
