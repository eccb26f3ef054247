"""`python -m kairos.server`: the same as `kairos serve`."""

import sys

from .app import main

sys.exit(main())
