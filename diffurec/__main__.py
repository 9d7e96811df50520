import sys

from diffurec.cli import main

sys.exit(main())
