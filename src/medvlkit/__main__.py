"""``python -m medvlkit`` (and ``torchrun -m medvlkit finetune ...``) runs the CLI."""

import sys

from medvlkit.apps.cli import main

sys.exit(main())
