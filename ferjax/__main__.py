"""`python -m ferjax ...`: the `ferjax` command."""
from ferjax.command import main

main()
