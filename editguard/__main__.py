import sys

from editguard.cli import main

sys.exit(main())
