"""CPython's own Pool tests, run on shoal's Pool and, in the same run, on multiprocess's.

The multiprocess wheel ships CPython's multiprocessing test suite as
``multiprocess.tests``. Its Pool classes (``_TestPool``, ``_TestPoolWorkerErrors``,
``_TestPoolWorkerLifetime``, ``TestPoolNotLeakOnFailure``) become concrete test cases here
the way ``install_tests_in_module_dict`` builds them: the base class, a mixin that says
which ``Pool`` to use, and ``unittest.TestCase``.

* ``TestShoal*``: a mixin whose ``Pool`` is :class:`shoal.hub.Pool` on a cluster of
  4 engines started for this module; everything else (``Process``, ``Queue``, ...) is
  multiprocess's own mixin's, for the side channels the tests use.
* ``TestMultiprocess*``: multiprocess's ``processes`` flavour, its pools started with
  ``spawn`` (forking an xdist worker that runs threads is unsafe).

Some of these tests call the module's ``multiprocessing.Pool`` (``multiprocess.Pool``)
rather than ``self.Pool``. They run as copies of the test functions whose global
``multiprocessing`` is a stand-in that gives the flavour's ``Pool``; multiprocess's module
itself is left as it is.

Every test of those classes runs under both flavours, by name. The ones shoal's Pool
cannot pass are listed in :data:`SHOAL_CANNOT` with the reason, and skipped there.
"""

from __future__ import annotations

import functools
import types
import unittest
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import multiprocess
import multiprocess.pool
import pytest
from multiprocess import tests as cpython

from shoal.hub import Client, Pool
from shoal.hub.testing import running_cluster

# One cluster for the module: every test that uses it goes to one xdist worker
# (``--dist loadgroup``); multiprocess's flavour, which needs none, to another group.
pytestmark = pytest.mark.xdist_group("pool-cpython-shoal")
_on_its_own = pytest.mark.xdist_group("pool-cpython-multiprocess")

_C = TypeVar("_C", bound=type)

#: Engines in this module's cluster: ``_TestPool`` makes ``Pool(4)``, ``Pool(3)`` and
#: counts the workers of ``Pool(3)``.
ENGINES = 4

#: The tests shoal's Pool cannot pass, by ``Class.test``, with the reason. Skipped for
#: shoal only; multiprocess's Pool runs them all.
SHOAL_CANNOT: dict[str, str] = {
    "TestShoalPoolWorkerLifetime.test_pool_worker_lifetime": (
        "maxtasksperchild replaces worker processes after n tasks; engines are long-lived"
        " and may be shared, so shoal's Pool refuses maxtasksperchild (ValueError)"
    ),
    "TestShoalPoolWorkerLifetime.test_pool_worker_lifetime_early_close": (
        "maxtasksperchild: refused by shoal's Pool (engines are not replaced per task)"
    ),
    "TestShoalPoolWorkerLifetime.test_worker_finalization_via_atexit_handler_of_multiprocessing": (
        "the test runs `from multiprocess import Pool` in a new interpreter: it tests"
        " multiprocess's own Pool, which the TestMultiprocess flavour does"
    ),
    "TestShoalPoolNotLeakOnFailure.test_release_unused_processes": (
        "it makes worker processes fail to start through context=; shoal's Pool starts no"
        " processes (the engines run already) and refuses context (ValueError)"
    ),
}


# -- what the tests' module-level ``multiprocessing`` becomes -------------------------------
class _Multiprocessing(types.SimpleNamespace):
    """``multiprocess`` as the copied tests see it: ``Pool`` (and ``pool.Pool``) are the
    flavour's, every other name is multiprocess's own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocess, name)


class _PoolModule(types.SimpleNamespace):
    """``multiprocess.pool`` with the flavour's ``Pool``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocess.pool, name)


def _with_pool(cls: _C, make_pool: Callable[..., Any], pool_class: Any) -> _C:
    """A subclass of CPython's test class ``cls`` whose test functions that name the module
    global ``multiprocessing`` see a stand-in whose ``Pool`` is ``make_pool`` and whose
    ``pool.Pool`` is ``pool_class``."""
    stand_in = _Multiprocessing(Pool=make_pool, pool=_PoolModule(Pool=pool_class))
    copies: dict[str, Any] = {}
    for name in dir(cls):
        func = getattr(cls, name)
        if not (name.startswith("test") and isinstance(func, types.FunctionType)):
            continue
        if "multiprocessing" not in func.__code__.co_names:
            continue
        namespace = dict(func.__globals__, multiprocessing=stand_in)
        copy = types.FunctionType(
            func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__
        )
        functools.update_wrapper(copy, func)
        copies[name] = copy
    return type(cls.__name__, (cls,), copies)  # type: ignore[return-value]


def _skipping(cls: _C) -> _C:
    """``cls`` with the tests :data:`SHOAL_CANNOT` lists skipped, with their reasons."""
    for key, reason in SHOAL_CANNOT.items():
        owner, _, name = key.partition(".")
        if owner == cls.__name__:
            setattr(cls, name, unittest.skip(f"shoal: {reason}")(getattr(cls, name)))
    return cls


# -- the two flavours ------------------------------------------------------------------------
_SPAWN = multiprocess.get_context("spawn")


class _MultiprocessMixin(cpython.ProcessesMixin):
    """multiprocess's own ``processes`` flavour, its pools started with spawn."""

    Pool = staticmethod(_SPAWN.Pool)


class _ShoalMixin(cpython.ProcessesMixin):
    """multiprocess's ``processes`` flavour with shoal's Pool on this module's cluster."""

    #: Set by the ``_shoal_client`` fixture before the class is set up.
    client: ClassVar[Client]

    @classmethod
    def Pool(cls, *args: Any, **kwargs: Any) -> Pool:
        return Pool(*args, client=cls.client, **kwargs)


def _shoal_pool(*args: Any, **kwargs: Any) -> Pool:
    """``multiprocessing.Pool`` for the copied tests of the shoal flavour."""
    return _ShoalMixin.Pool(*args, **kwargs)


def _on_shoal(cls: _C) -> _C:
    return _with_pool(cls, _shoal_pool, _shoal_pool)


def _on_multiprocess(cls: _C) -> _C:
    return _with_pool(cls, _SPAWN.Pool, multiprocess.pool.Pool)


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A cluster of :data:`ENGINES` engines for the shoal flavour; its client."""
    folder: Path = tmp_path_factory.mktemp("pool-cpython")
    with running_cluster(folder, ENGINES) as (_, client):
        yield client


@pytest.fixture(scope="class", autouse=True)
def _shoal_client(request: pytest.FixtureRequest) -> Iterator[None]:
    """Give a shoal class its client before unittest's ``setUpClass`` runs."""
    if not (isinstance(request.cls, type) and issubclass(request.cls, _ShoalMixin)):
        yield
        return
    client: Client = request.getfixturevalue("pool_cluster")
    _ShoalMixin.client = client
    yield
    del _ShoalMixin.client


# -- shoal's Pool ----------------------------------------------------------------------------
@_skipping
class TestShoalPool(_on_shoal(cpython._TestPool), _ShoalMixin, unittest.TestCase):
    """CPython's ``_TestPool`` on shoal's Pool."""


@_skipping
class TestShoalPoolWorkerErrors(
    _on_shoal(cpython._TestPoolWorkerErrors), _ShoalMixin, unittest.TestCase
):
    """CPython's ``_TestPoolWorkerErrors`` on shoal's Pool."""


@_skipping
class TestShoalPoolWorkerLifetime(
    _on_shoal(cpython._TestPoolWorkerLifetime), _ShoalMixin, unittest.TestCase
):
    """CPython's ``_TestPoolWorkerLifetime`` on shoal's Pool."""


@_skipping
class TestShoalPoolNotLeakOnFailure(
    _on_shoal(cpython.TestPoolNotLeakOnFailure), _ShoalMixin, unittest.TestCase
):
    """CPython's ``TestPoolNotLeakOnFailure`` on shoal's Pool."""


# -- multiprocess's own Pool, for comparison -------------------------------------------------
@_on_its_own
class TestMultiprocessPool(
    _on_multiprocess(cpython._TestPool), _MultiprocessMixin, unittest.TestCase
):
    """CPython's ``_TestPool`` on multiprocess's Pool (spawn)."""


@_on_its_own
class TestMultiprocessPoolWorkerErrors(
    _on_multiprocess(cpython._TestPoolWorkerErrors), _MultiprocessMixin, unittest.TestCase
):
    """CPython's ``_TestPoolWorkerErrors`` on multiprocess's Pool (spawn)."""


@_on_its_own
class TestMultiprocessPoolWorkerLifetime(
    _on_multiprocess(cpython._TestPoolWorkerLifetime), _MultiprocessMixin, unittest.TestCase
):
    """CPython's ``_TestPoolWorkerLifetime`` on multiprocess's Pool (spawn)."""


@_on_its_own
class TestMultiprocessPoolNotLeakOnFailure(
    _on_multiprocess(cpython.TestPoolNotLeakOnFailure), unittest.TestCase
):
    """CPython's ``TestPoolNotLeakOnFailure`` on multiprocess's Pool."""


# -- the lists are complete ------------------------------------------------------------------
_PAIRS = [
    (TestShoalPool, TestMultiprocessPool),
    (TestShoalPoolWorkerErrors, TestMultiprocessPoolWorkerErrors),
    (TestShoalPoolWorkerLifetime, TestMultiprocessPoolWorkerLifetime),
    (TestShoalPoolNotLeakOnFailure, TestMultiprocessPoolNotLeakOnFailure),
]


def _tests(cls: type) -> set[str]:
    return {n for n in dir(cls) if n.startswith("test") and callable(getattr(cls, n))}


def test_both_flavours_run_the_same_tests() -> None:
    """Every CPython Pool test runs under both flavours, none dropped."""
    bases = [
        cpython._TestPool,
        cpython._TestPoolWorkerErrors,
        cpython._TestPoolWorkerLifetime,
        cpython.TestPoolNotLeakOnFailure,
    ]
    for base, (shoal, mine) in zip(bases, _PAIRS, strict=True):
        assert _tests(shoal) == _tests(mine) == _tests(base)
        assert _tests(base)


def test_skips_name_real_tests() -> None:
    """Each entry of SHOAL_CANNOT names a test of a shoal class, and has a reason."""
    classes = {shoal.__name__: shoal for shoal, _ in _PAIRS}
    for key, reason in SHOAL_CANNOT.items():
        owner, _, name = key.partition(".")
        assert name in _tests(classes[owner]), key
        assert getattr(getattr(classes[owner], name), "__unittest_skip__", False), key
        assert reason.strip()


def test_copied_tests_see_the_flavours_pool(pool_cluster: Client) -> None:
    """The copies of tests that call ``multiprocessing.Pool`` get the flavour's Pool."""
    shoal_test = TestShoalPoolWorkerErrors.test_async_error_callback
    mine_test = TestMultiprocessPoolWorkerErrors.test_async_error_callback
    assert shoal_test.__globals__["multiprocessing"].Pool is _shoal_pool
    assert mine_test.__globals__["multiprocessing"].Pool == _SPAWN.Pool
    assert (
        cpython._TestPoolWorkerErrors.test_async_error_callback.__globals__["multiprocessing"]
        is multiprocess
    )  # multiprocess's own module is left as it is
    _ShoalMixin.client = pool_cluster
    try:
        pool = _shoal_pool(1)
        assert isinstance(pool, Pool)
        pool.terminate()
    finally:
        del _ShoalMixin.client
