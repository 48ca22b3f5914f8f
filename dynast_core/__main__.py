"""`python -m dynast_core ...` runs the command line (see dynast_core/cli.py)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
