"""`python -m introspect ...` is the `introspect` command."""

import sys

from .cli import main

sys.exit(main())
