import sys

from hcp.cli import main

sys.exit(main())
