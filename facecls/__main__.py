import sys

from facecls.cli import main

sys.exit(main())
