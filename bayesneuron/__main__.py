"""``python -m bayesneuron``: the command-line interface."""

import sys

from bayesneuron.cli import main

sys.exit(main())
