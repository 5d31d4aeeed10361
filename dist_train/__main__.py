"""``python -m dist_train`` is the ``dist-train`` command."""

import logging
import os
import sys

from dist_train.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A rank of a multi-process job (torchrun launches ``-m dist_train``) leaves without the interpreter's
    # teardown once its work is done and written: there, the process group's threads racing C++ static
    # destructors now and then abort the process ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code or 0)
sys.exit(code)
