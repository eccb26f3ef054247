"""`python -m kairos.client.bench ...` runs `kairos bench` on its own."""

import sys

from .cli import main

sys.exit(main())
