import sys

from emud.cli import main

sys.exit(main())
