import sys

from revproxy.cli import main

sys.exit(main())
