"""Where a cluster's files live: ``~/.shoal/profile_<name>/``, or under ``$SHOAL_DIR``."""

from __future__ import annotations

import os

__all__ = ["CLIENT_FILE", "ENGINES_LOG", "ENGINE_FILE", "profile_dir", "shoal_dir"]

CLIENT_FILE = "hub-client.json"
ENGINE_FILE = "hub-engine.json"
#: The engines' log records, as the hub received them (``shoal logs`` prints it).
ENGINES_LOG = "engines.log"


def shoal_dir() -> str:
    """``$SHOAL_DIR`` if set, else ``~/.shoal``."""
    return os.environ.get("SHOAL_DIR") or os.path.join(os.path.expanduser("~"), ".shoal")


def profile_dir(profile: str = "default") -> str:
    """The folder of a profile: where its hub writes its connection files."""
    if not profile or os.sep in profile or profile in (".", ".."):
        raise ValueError(f"a profile is a plain name such as 'default', got {profile!r}")
    return os.path.join(shoal_dir(), f"profile_{profile}")
