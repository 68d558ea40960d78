"""``python -m hermes_lite`` runs the ``hermes-lite`` command."""

import sys

from .cli import main

sys.exit(main())
