"""`python -m msdn.prepare ...`: see msdn.prepare (and `--help`)."""
import sys

from .cli import run

sys.exit(run())
