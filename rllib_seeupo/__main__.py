import sys

from rllib_seeupo.cli import main

sys.exit(main())
