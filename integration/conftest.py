"""The integration tests import their helpers (``multihost.py``) from beside this file."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from shoal.hub.testing import hub

__all__ = ["hub"]
