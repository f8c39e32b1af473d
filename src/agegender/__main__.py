"""`python -m agegender ...`: the `agegender` command without its console script (e.g. outside an activated venv)."""

import sys

from agegender.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
