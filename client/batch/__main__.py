"""`python -m kairos.client.batch MODEL --input FILE --output FILE`."""

import sys

from .cli import main

sys.exit(main())
