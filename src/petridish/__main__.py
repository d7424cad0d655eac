import sys

from petridish.cli import main

sys.exit(main())
