"""`python -m tools <tool> [flags]`, the same as `resnet-toolkit <tool> [flags]`."""

import sys

from tools.cli import main

sys.exit(main())
