"""``python -m ptycho_fast``: the ``ptycho-fast`` command line."""

import sys

from .cli import main

sys.exit(main())
