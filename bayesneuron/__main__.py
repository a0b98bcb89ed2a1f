"""``python -m bayesneuron``: the command-line interface (as the ``bayesneuron`` command)."""

import sys

from bayesneuron.cli import main

if __name__ == "__main__":
    sys.exit(main())
