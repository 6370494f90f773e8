"""Distributed arrays: shoal.arrays on 2 engines against numpy on one core and dask.array.

Two float64 arrays of 512 MiB, shape (8192, 8192), split along axis 0 over the 2 engines
(two blocks of 4096 rows), and five operations on them:

* ``np.sin(x)``: a compute-bound ufunc, each engine on its own block;
* ``x + y``: a memory-bound binary ufunc on two arrays with the same layout;
* ``x.sum(axis=0)``: a reduction along the split axis (partials combined on one engine);
* ``np.cumsum(x, axis=0)``: an accumulation along the split axis (running totals);
* ``redistribute(x, boundaries=[0, 2048, 8192])``: 2048 rows move engine to engine.

and a sixth on two more arrays, 512 MiB in total: ``x @ y.T`` with ``x`` and ``y`` of shape
(4096, 8192), split the same way; the result is (4096, 4096), split like ``x``. Each engine
multiplies its rows of ``x`` by all of ``y.T`` (fetched from the other engine). Its result
is checked once against numpy's on the same data (numpy's inputs are gathered from shoal's).

Baselines, measured in the same run and interleaved with shoal:

* numpy on one core in this process, the same operations on local ndarrays; for the
  redistribution, a copy of the rows that move (``a[2048:4096].copy()``); ``a @ b.T`` is
  numpy's matmul, which runs on its BLAS's own threads (one per core unless told);
* dask.array on a dask.distributed LocalCluster (2 worker processes, 1 thread each):
  ``x`` and ``y`` made with ``da.random.random(..., chunks=(4096, 8192)).persist()``,
  every operation timed as ``.persist()`` and ``distributed.wait``; the redistribution
  as ``x.rechunk(((2048, 6144), (8192,)))``; ``x @ y.T`` on two more arrays in chunks of
  (2048, 8192). Every result is dropped (and forgotten by the scheduler) before the next
  sample, so that no sample finds a previous one's data. dask's workers run their BLAS on
  one thread each (its nanny sets ``OPENBLAS_NUM_THREADS=1``); shoal's engines keep the
  BLAS default (one thread per core each).

shoal's operations are eager: a call returns once the engines hold the result (a
DistArray); the call is timed, then the result deleted. Targets: numpy's time over
shoal's >= 1.6 for ``np.sin`` (2 engines on 2 cores against one), and dask's time over
shoal's > 1 for every operation. With ``--quick`` the arrays are small and dask is
skipped. The three systems run side by side: their inputs (3 x 1.5 GiB) and one result
each at a time peak at about 6 GiB; every cluster is ended afterwards (``Reaper``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import MiB, Row, Skipped, Stats, interleave_all, note
from bench_hub import ENGINES, _dask_client, _shoal_cluster

ARRAY_REPEATS = 5  # a sample of numpy's np.sin on 512 MiB takes a few seconds
SIN_TARGET = 1.6  # numpy's np.sin time over shoal's, on 2 engines
FORGET_TIMEOUT = 30.0  # s: dask's scheduler forgets a released result within this
MATMUL = "x @ y.T"  # on two arrays of their own, (side/2, side) each

# (name, the operation on x and y): the same call for shoal, numpy and dask.
UFUNC_OPS: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("np.sin(x)", lambda x, y: np.sin(x)),
    ("x + y", lambda x, y: x + y),
    ("x.sum(axis=0)", lambda x, y: x.sum(axis=0)),
    ("np.cumsum(x, axis=0)", lambda x, y: np.cumsum(x, axis=0)),
]


def _side(mib: int) -> int:
    """The side of a square float64 array of ``mib`` MiB (8192 for 512), a multiple of 4."""
    side = math.isqrt(mib * MiB // 8)
    return side - side % 4


def _matmul_shape(side: int) -> tuple[int, int]:
    """The shape of ``x`` and of ``y`` for ``x @ y.T``: together as big as one square array."""
    return side // 2, side


def _shoal_s(op: Callable[[], Any], kind: type) -> float:
    """Seconds of ``op()`` (eager: the engines hold the result when it returns)."""
    t0 = time.perf_counter()
    out = op()
    dt = time.perf_counter() - t0
    assert isinstance(out, kind), type(out)
    del out
    return dt


def _numpy_s(op: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    out = op()
    dt = time.perf_counter() - t0
    del out
    return dt


def _held(keys: list[Any], dask_scheduler: Any = None) -> bool:
    """On dask's scheduler: whether it still knows any of ``keys``."""
    return any(key in dask_scheduler.tasks for key in keys)


class _DaskFailed(Exception):
    """The dask side of a measurement failed (shoal's and numpy's go on without it)."""


def _dask_s(client: Any, op: Callable[[], Any]) -> float:
    """Seconds of ``op().persist()`` until the workers hold it; then the result dropped."""
    try:
        return _dask_sample(client, op)
    except Exception as exc:
        raise _DaskFailed(f"{type(exc).__name__}: {exc}") from exc


def _dask_sample(client: Any, op: Callable[[], Any]) -> float:
    import distributed

    t0 = time.perf_counter()
    out = op().persist()
    distributed.wait(out)
    dt = time.perf_counter() - t0
    futures = distributed.futures_of(out)
    keys = [f.key for f in futures]
    del out
    client.cancel(futures)
    del futures
    gc.collect()
    deadline = time.monotonic() + FORGET_TIMEOUT
    while client.run_on_scheduler(_held, keys):
        if time.monotonic() > deadline:
            raise RuntimeError(f"dask still holds a result {FORGET_TIMEOUT:g} s after its drop")
        time.sleep(0.01)
    return dt


def _dask_inputs(client: Any, shapes: list[tuple[int, int]]) -> list[Any]:
    """Random arrays of ``shapes`` on dask's workers: two chunks of rows, one per worker."""
    import dask.array as da
    import distributed

    out = [
        da.random.random(shape, chunks=(shape[0] // ENGINES, shape[1])).persist()
        for shape in shapes
    ]
    distributed.wait(out)
    return out


def _shoal_and_numpy_arrays(sa: Any, rc: Any, side: int) -> dict[str, Any]:
    """shoal's inputs and numpy's: ``x``, ``y`` and ``a``, ``b`` square; ``xm``, ``ym`` and
    ``am``, ``bm`` for ``x @ y.T``, numpy's gathered from shoal's to check its result once."""
    mm = _matmul_shape(side)
    arrays: dict[str, Any] = {
        "x": sa.random((side, side), seed=1, client=rc),
        "y": sa.random((side, side), seed=2, client=rc),
        "a": np.random.default_rng(1).random((side, side)),
        "b": np.random.default_rng(2).random((side, side)),
        "xm": sa.random(mm, seed=3, client=rc),
        "ym": sa.random(mm, seed=4, client=rc),
    }
    arrays["am"], arrays["bm"] = sa.gather(arrays["xm"]), sa.gather(arrays["ym"])
    note(f"checking shoal's {MATMUL} against numpy's on the same {mm} arrays")
    _check_matmul(sa, *(arrays[k] for k in ("xm", "ym", "am", "bm")))
    return arrays


def _check_matmul(sa: Any, x: Any, y: Any, a: Any, b: Any) -> None:
    """Whether shoal's ``x @ y.T`` is numpy's ``a @ b.T`` (the same data); raise if not."""
    got = sa.gather(x @ y.T)
    want = a @ b.T
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-9, atol=0):
        diff = np.abs(got - want).max() if got.shape == want.shape else "n/a"
        raise RuntimeError(
            f"shoal's x @ y.T differs from numpy's: shape {got.shape} (want {want.shape}),"
            f" max abs difference {diff}"
        )


def _cases(
    sa: Any, side: int, arrays: dict[str, Any], client: Any
) -> list[tuple[str, list[Callable[[], float]]]]:
    """Each operation's name and its samplers: shoal, numpy, and dask when ``client``."""
    x, y, a, b, dx, dy = (arrays[k] for k in ("x", "y", "a", "b", "dx", "dy"))
    xm, ym, am, bm, dxm, dym = (arrays[k] for k in ("xm", "ym", "am", "bm", "dxm", "dym"))
    moved = side // 4  # rows side/4 .. side/2 move from the first engine to the second
    cases: list[tuple[str, list[Callable[[], float]]]] = []
    for name, op in UFUNC_OPS:
        fns: list[Callable[[], float]] = [
            functools.partial(_shoal_s, functools.partial(op, x, y), sa.DistArray),
            functools.partial(_numpy_s, functools.partial(op, a, b)),
        ]
        if client is not None:
            fns.append(functools.partial(_dask_s, client, functools.partial(op, dx, dy)))
        cases.append((name, fns))
    fns = [
        functools.partial(_shoal_s, lambda: xm @ ym.T, sa.DistArray),
        functools.partial(_numpy_s, lambda: am @ bm.T),
    ]
    if client is not None:
        fns.append(functools.partial(_dask_s, client, lambda: dxm @ dym.T))
    cases.append((MATMUL, fns))
    bounds = [0, moved, side]
    chunks = ((moved, side - moved), (side,))
    fns = [
        functools.partial(_shoal_s, lambda: sa.redistribute(x, boundaries=bounds), sa.DistArray),
        functools.partial(_numpy_s, a[moved : 2 * moved].copy),  # the rows that move
    ]
    if client is not None:
        fns.append(functools.partial(_dask_s, client, lambda: dx.rechunk(chunks)))
    cases.append((f"redistribute x ({moved} rows move)", fns))
    return cases


def bench_arrays(cfg: Any) -> list[Row]:
    """shoal.arrays (2 engines) vs numpy (1 core) and dask.array (2 workers): 6 operations."""
    try:
        import shoal.arrays as sa
    except ImportError as exc:
        raise Skipped(f"shoal.arrays is not importable yet ({exc})") from None
    side = _side(cfg.array_mib)
    mib = side * side * 8 // MiB
    repeats = min(cfg.repeats, ARRAY_REPEATS)
    stats: list[tuple[str, list[Stats]]] = []
    dask_version = ""
    with _shoal_cluster() as rc, contextlib.ExitStack() as stack:
        client = None
        if cfg.quick:
            note("dask peer skipped with --quick")
        else:
            try:
                client = stack.enter_context(_dask_client())
            except Exception as exc:  # a failing peer must not cost the shoal rows
                note(f"dask could not start, no dask rows: {type(exc).__name__}: {exc}")
        where = "shoal, numpy and dask" if client is not None else "shoal and numpy"
        mm = _matmul_shape(side)
        note(f"making 2 x {mib} MiB arrays ({side}, {side}) and 2 x {mm} in {where}")
        arrays = _shoal_and_numpy_arrays(sa, rc, side)
        arrays.update(dx=None, dy=None, dxm=None, dym=None)
        if client is not None:
            try:
                dask_arrays = _dask_inputs(client, [(side, side), (side, side), mm, mm])
                arrays.update(zip(("dx", "dy", "dxm", "dym"), dask_arrays, strict=True))
                del dask_arrays
                import dask

                dask_version = dask.__version__
            except Exception as exc:
                note(f"dask arrays failed, no dask rows: {type(exc).__name__}: {exc}")
                client = None
        cases = _cases(sa, side, arrays, client)
        for name, fns in cases:
            if client is None:
                del fns[2:]
            peers = "numpy and dask" if len(fns) > 2 else "numpy"
            note(f"{name} on {mib} MiB vs {peers}: {repeats} repeats each")
            try:
                stats.append((name, interleave_all(fns, repeats)))
            except _DaskFailed as exc:
                # shoal and numpy again without dask, and dask no further
                note(f"dask failed on {name}, no more dask rows: {exc}")
                client = None
                stats.append((name, interleave_all(fns[:2], repeats)))
        del cases, fns
        arrays.clear()  # every array freed before the clusters stop
        gc.collect()
    return _rows(stats, mib, side, repeats, dask_version)


def _rows(
    stats: list[tuple[str, list[Stats]]], mib: int, side: int, repeats: int, dask_version: str
) -> list[Row]:
    moved = side // 4
    numpy_note = (
        f"{repeats} samples each; float64 ({side}, {side}), {mib} MiB; shoal: sa.random()"
        f" split along axis 0 over {ENGINES} engines, each op eager (timed until the engines"
        " hold the result, a DistArray); numpy: the same op on local ndarrays in this process"
        f" (1 core), the redistribution as a[{moved}:{2 * moved}].copy() (the rows that"
        " move); seconds: lower is better"
    )
    dask_note = (
        f"dask {dask_version} LocalCluster(n_workers={ENGINES}, threads_per_worker=1,"
        f" processes=True): x, y = da.random.random(chunks=({side // ENGINES}, {side}))"
        ".persist(); each op .persist() + distributed.wait, the result dropped (and"
        " forgotten by the scheduler) between samples; the redistribution as"
        f" x.rechunk((({moved}, {side - moved}), ({side},)))"
    )
    n, k = _matmul_shape(side)
    matmul_numpy_note = (
        f"{repeats} samples each; float64 x, y ({n}, {k}) each, {mib} MiB in total, result"
        f" ({n}, {n}); shoal: sa.random() split along axis 0 over {ENGINES} engines, x @ y.T"
        " eager (each engine its rows of x times all of y.T), its result checked once"
        " against numpy's (allclose, same data); numpy: a @ b.T in this process; both run"
        " their BLAS on its default threads (one per core); seconds: lower is better"
    )
    matmul_dask_note = (
        f"dask {dask_version} LocalCluster(n_workers={ENGINES}, threads_per_worker=1,"
        f" processes=True, so OPENBLAS_NUM_THREADS=1 on the workers): x, y ="
        f" da.random.random(({n}, {k}), chunks=({n // ENGINES}, {k})).persist();"
        " (x @ y.T).persist() + distributed.wait, the result dropped (and forgotten by the"
        " scheduler) between samples"
    )
    rows = []
    for name, (s, b_numpy, *b_dask) in stats:
        sin = name == "np.sin(x)"
        matmul = name == MATMUL
        rows.append(
            Row(
                name=f"arrays {name} {mib} MiB vs numpy",
                unit="s",
                shoal=s,
                baseline_name="numpy, 1 process" if matmul else "numpy, 1 core",
                baseline=b_numpy,
                target=f"b/s >= {SIN_TARGET:g}" if sin else "(none: report)",
                target_ok=b_numpy.median >= SIN_TARGET * s.median if sin else None,
                inverse=True,
                note=matmul_numpy_note if matmul else numpy_note,
            )
        )
        if b_dask:
            rows.append(
                Row(
                    name=f"arrays {name} {mib} MiB vs dask",
                    unit="s",
                    shoal=s,
                    baseline_name=f"dask.array, {ENGINES} workers",
                    baseline=b_dask[0],
                    target="b/s > 1",
                    target_ok=b_dask[0].median > s.median,
                    inverse=True,
                    note=matmul_dask_note if matmul else dask_note,
                )
            )
    return rows
