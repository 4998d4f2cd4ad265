"""`python -m slatte`: the `slatte` command."""

import sys

from slatte.cli import main

sys.exit(main())
