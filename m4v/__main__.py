import sys

from m4v.cli import main

sys.exit(main())
