"""``python -m parallax`` is the ``parallax`` command."""
import sys

from .cli.main import main

sys.exit(main())
