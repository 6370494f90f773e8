"""``python -m shoal.engine``: run one engine (see :func:`shoal.engine._engine.main`)."""

import sys

from ._engine import main

sys.exit(main())
