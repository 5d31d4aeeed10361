"""``python -m dist_train`` is the ``dist-train`` command."""

import sys

from dist_train.cli import main

sys.exit(main())
