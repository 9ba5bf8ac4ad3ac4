import sys

from tfb.cli import main

sys.exit(main())
