import sys

from cnnzoo.cli import main

sys.exit(main())
