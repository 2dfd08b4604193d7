"""``python -m diffptycho.cli``: same as the ``diffptycho`` command."""

import sys

from diffptycho.cli import main

sys.exit(main())
