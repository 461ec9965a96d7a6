import sys

from stepbatch.cli import main

sys.exit(main())
