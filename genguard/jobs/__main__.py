"""`python -m genguard.jobs worker|migrate ...` = `genguard worker` / `genguard jobs migrate`."""

import sys

from genguard.client.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(argv if argv[:1] == ["worker"] else ["jobs", *argv]))
