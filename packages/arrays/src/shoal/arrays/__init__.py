"""shoal.arrays: numpy arrays kept on the engines, computed on where they are.

* :class:`RemoteArray` - an ndarray held on one engine.
* :class:`DistArray` - one ndarray split along one axis into blocks on several engines.

Both follow numpy: ufuncs (every method), the common numpy functions, operators, indexing
and assignment run on the engines holding the data, in parallel, and give arrays of the
same kind (numpy scalars for full reductions). Data comes to the client only when asked
for: :func:`gather` or ``np.asarray(x)``.
"""

from ._array import DistArray as DistArray
from ._array import RemoteArray as RemoteArray
from ._core import WARN_BYTES as WARN_BYTES
from ._core import PerformanceWarning as PerformanceWarning
from ._core import gather as gather
from ._core import transfers as transfers
from ._create import apply as apply
from ._create import arange as arange
from ._create import empty as empty
from ._create import full as full
from ._create import ones as ones
from ._create import random as random
from ._create import redistribute as redistribute
from ._create import remote as remote
from ._create import scatter as scatter
from ._create import standard_normal as standard_normal
from ._create import vectorize as vectorize
from ._create import zeros as zeros
from ._functions import HANDLED as _HANDLED

__all__ = [
    "WARN_BYTES",
    "DistArray",
    "PerformanceWarning",
    "RemoteArray",
    "apply",
    "arange",
    "empty",
    "full",
    "gather",
    "ones",
    "random",
    "redistribute",
    "remote",
    "scatter",
    "standard_normal",
    "transfers",
    "vectorize",
    "zeros",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415

        return version("shoal-arrays")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("shoal.arrays._"):
        _obj.__module__ = "shoal.arrays"
del _name, _obj, _HANDLED
