"""``python -m asyncjobs``: the same as the ``asyncjobs`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
