import sys

from reproduce.driver import main

sys.exit(main())
