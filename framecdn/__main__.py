import sys

from framecdn.cli import main

sys.exit(main())
