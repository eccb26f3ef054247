"""`python -m kairos.client.cli`: the same as the `kairos` command."""

import sys

from .main import main

sys.exit(main())
