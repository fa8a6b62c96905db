"""`python -m liberation` is the `liberation` command."""

import sys

from liberation.cli import main

sys.exit(main())
