"""`python -m jaxscale.cli` runs the command line."""

import sys

from jaxscale.cli.app import main

sys.exit(main())
