import sys

from peerlearn.cli import main

sys.exit(main())
