"""python -m sandbox_magic: the sandbox-magic command."""

import sys

from .cli import main

sys.exit(main())
