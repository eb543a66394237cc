import sys

from ufp4_compile.cli.main import main

sys.exit(main())
