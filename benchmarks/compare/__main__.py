import sys

from genguard.benchmarks.compare.cli import main

sys.exit(main())
