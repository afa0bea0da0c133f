"""``python -m uqkit``: the ``uqkit`` command (so that ``torchrun ... -m uqkit bench`` runs it)."""

import sys

from uqkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
