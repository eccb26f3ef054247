"""`python -m kairos.optimize ...` runs the same command line as `kairos optimize ...`."""

import sys

from kairos.optimize.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
