import sys

from learned_optim.cli import main

sys.exit(main())
