"""`python -m polyfuse` (what torchrun runs on each rank): the command line."""
import sys

from polyfuse.cli.main import main

sys.exit(main())
