"""RemoteArray and DistArray on a real cluster: making them, where the data goes, what
stays on the engines, lifetimes and errors."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from arrays_testing import NoGather, object_counts

import shoal.arrays as sa
from shoal.arrays import _blockwise
from shoal.hub import Client, EngineDiedError, RemoteError
from shoal.hub.testing import ClusterStarter, wait_until
from shoal.wire import shared_memory_enabled


@pytest.mark.parametrize(
    ("shape", "axis", "engines", "boundaries"),
    [
        ((10,), 0, None, None),
        ((7, 3), 0, [0, 1, 2], [0, 0, 5, 7]),  # an empty first block
        ((4, 9), 1, [2, 0], [0, 8, 9]),
        ((2, 3, 4), 2, [1, 1, 0], [0, 1, 1, 4]),  # one engine twice, an empty middle block
        ((2,), 0, [0, 1, 2], None),  # more engines than rows
    ],
)
def test_scatter_and_gather_give_back_the_array(
    clean: Client,
    shape: tuple[int, ...],
    axis: int,
    engines: list[int] | None,
    boundaries: list[int] | None,
) -> None:
    a = np.arange(np.prod(shape)).reshape(shape)
    x = sa.scatter(a, axis, engines, boundaries, client=clean)
    assert isinstance(x, sa.DistArray)
    assert (x.shape, x.dtype, x.ndim, x.size, x.nbytes, len(x)) == (
        a.shape,
        a.dtype,
        a.ndim,
        a.size,
        a.nbytes,
        len(a),
    )
    assert x.axis == axis
    if boundaries is not None:
        assert x.boundaries == tuple(boundaries)
    if engines is not None:
        assert x.engines == tuple(engines)
    np.testing.assert_array_equal(sa.gather(x), a)
    np.testing.assert_array_equal(np.asarray(x), a)
    blocks = [sa.gather(b) for b in x.blocks]
    np.testing.assert_array_equal(np.concatenate(blocks, axis=axis), a)


def test_bad_layouts_are_refused_with_a_reason(clean: Client) -> None:
    a = np.zeros((6, 2))
    with pytest.raises(ValueError, match="non-decreasing offsets from 0 to 6"):
        sa.scatter(a, boundaries=[0, 4, 3, 6], client=clean)
    with pytest.raises(ValueError, match="engines must name engines of the cluster"):
        sa.scatter(a, engines=[0, 99], client=clean)
    with pytest.raises(ValueError, match="at least one dimension"):
        sa.scatter(np.float64(3.0), client=clean)
    with pytest.raises(np.exceptions.AxisError):
        sa.scatter(a, axis=2, client=clean)
    with pytest.raises(TypeError, match="not directly"):
        sa.DistArray()


def test_metadata_and_repr_cost_no_data(clean: Client) -> None:
    x = sa.random((512, 1024), seed=3, client=clean)  # 4 MiB
    with NoGather(clean, slack=0):
        assert (x.shape, x.dtype, x.size, x.nbytes) == (
            (512, 1024),
            np.float64,
            512 * 1024,
            4 << 20,
        )
        assert (len(x.blocks), x.engines) == (3, tuple(clean.ids))
    with NoGather(clean, slack=16 * 1024):  # the corner only
        text = repr(x)
    assert "DistArray(shape=(512, 1024), dtype=float64, 3 blocks" in text
    corner = sa.gather(x)[:3, :3]
    assert np.array2string(corner, threshold=27, edgeitems=3) in text


def test_asarray_follows_numpy_2(clean: Client) -> None:
    a = np.arange(6.0)
    for x in (sa.scatter(a, client=clean), sa.remote(a, client=clean)):
        for got in (np.asarray(x), np.array(x), np.array(x, copy=True)):
            assert type(got) is np.ndarray
            np.testing.assert_array_equal(got, a)
        np.testing.assert_array_equal(np.asarray(x, dtype=np.float32), a.astype(np.float32))
        for fn in (np.asarray, np.array):
            with pytest.raises(ValueError, match="copy=False"):
                fn(x, copy=False)
        assert not hasattr(x, "__array_interface__")


def test_constructors_make_the_data_on_the_engines(clean: Client) -> None:
    before = clean.bytes_received
    z = sa.zeros((5, 4), client=clean)
    o = sa.ones((5, 4), dtype=np.int32, axis=1, client=clean)
    f = sa.full((3,), 7.5, client=clean)
    e = sa.empty((4, 2), dtype=np.uint8, client=clean)
    r = sa.arange(3, 20, 4, client=clean)
    g = sa.random((9, 2), seed=11, client=clean)
    n = sa.standard_normal((9, 2), seed=11, client=clean)
    assert clean.bytes_received - before < 64 * 1024
    np.testing.assert_array_equal(sa.gather(z), np.zeros((5, 4)))
    assert (o.axis, o.dtype) == (1, np.int32)
    np.testing.assert_array_equal(sa.gather(o), np.ones((5, 4), np.int32))
    np.testing.assert_array_equal(sa.gather(f), np.full(3, 7.5))
    assert (e.shape, e.dtype) == ((4, 2), np.uint8)
    np.testing.assert_array_equal(sa.gather(r), np.arange(3, 20, 4))
    np.testing.assert_allclose(
        sa.gather(sa.arange(0.0, 1.0, 0.1, client=clean)), np.arange(0.0, 1.0, 0.1)
    )
    values = sa.gather(g)
    assert values.min() >= 0
    assert values.max() < 1
    assert len(np.unique(values)) == values.size
    np.testing.assert_array_equal(sa.gather(sa.random((9, 2), seed=11, client=clean)), values)
    assert not np.array_equal(sa.gather(sa.random((9, 2), seed=12, client=clean)), values)
    assert not np.array_equal(sa.gather(n), values)


def test_result_types_are_stable(clean: Client) -> None:
    a = np.arange(12.0).reshape(4, 3)
    x = sa.scatter(a, client=clean)
    r = sa.remote(a, engine=clean.ids[-1], client=clean)
    assert isinstance(r, sa.RemoteArray)
    assert r.engine == clean.ids[-1]
    assert isinstance(r + 1, sa.RemoteArray)
    assert isinstance(np.sin(r), sa.RemoteArray)
    assert isinstance(r[1:], sa.RemoteArray)
    assert isinstance(x + r, sa.DistArray)
    assert isinstance(r + x, sa.DistArray)
    assert isinstance(x.sum(axis=0), sa.DistArray)
    total = x.sum()
    assert type(total) is np.float64
    assert total == a.sum()
    assert type(r.max()) is np.float64
    np.testing.assert_array_equal(sa.gather(r * x), a * a)


def test_operations_leave_the_data_on_the_engines(clean: Client) -> None:
    """A 4 MiB array through a chain of operations: nothing but small replies comes to
    the client, and the results are numpy's."""
    a = np.random.default_rng(1).random((1024, 512))
    b = np.random.default_rng(2).random((1024, 512))
    x = sa.scatter(a, client=clean)
    y = sa.scatter(b, boundaries=[0, 100, 1000, 1024], engines=[2, 0, 1], client=clean)
    with NoGather(clean):
        s = np.sin(x) + y * 2  # y is misaligned: its rows move engine to engine
        c = np.cumsum(x, axis=0)
        m = x.sum(axis=0)
        t = x.T[3:9]
        x2 = sa.redistribute(x, boundaries=[0, 10, 20, 1024])
        x3 = sa.redistribute(x, axis=1)
        k = np.concatenate([x, y])
        w = np.where(x > 0.5, x, -y)
        idx = x[[5, 1000, 3]]
        z = x.copy()
        z[100:900:7] = y[:800:7]
        z += 1
    np.testing.assert_allclose(sa.gather(s), np.sin(a) + b * 2)
    np.testing.assert_allclose(sa.gather(c), np.cumsum(a, axis=0))
    np.testing.assert_allclose(sa.gather(m), a.sum(axis=0))
    np.testing.assert_array_equal(sa.gather(t), a.T[3:9])
    assert (x2.boundaries, x3.axis) == ((0, 10, 20, 1024), 1)
    np.testing.assert_array_equal(sa.gather(x2), a)
    np.testing.assert_array_equal(sa.gather(x3), a)
    np.testing.assert_array_equal(sa.gather(k), np.concatenate([a, b]))
    np.testing.assert_array_equal(sa.gather(w), np.where(a > 0.5, a, -b))
    np.testing.assert_array_equal(sa.gather(idx), a[[5, 1000, 3]])
    expected = a.copy()
    expected[100:900:7] = b[:800:7]
    np.testing.assert_array_equal(sa.gather(z), expected + 1)


def test_dropped_arrays_free_their_blocks(rc: Client) -> None:
    baseline = object_counts(rc)
    x = sa.random((300, 10), seed=5, client=rc)
    views = [x[10:200], x.T, x.reshape(3000)]
    results = [np.sin(x), x + views[0].sum(), x.cumsum(axis=0)]
    grown = object_counts(rc)
    assert sum(grown.values()) >= sum(baseline.values()) + 3 * 3
    del x, views, results
    assert object_counts(rc) == baseline


def test_remote_failures_reach_the_client_with_their_type(clean: Client) -> None:
    x = sa.scatter(np.arange(6), client=clean)
    with pytest.raises(ValueError, match="cannot reshape") as info:
        sa.apply(lambda block: block.reshape(5), x)
    remote = info.value  # also a RemoteError: where it happened, the engine's traceback
    assert isinstance(remote, RemoteError)
    assert remote.ename == "ValueError"
    assert remote.engine_id in clean.ids
    assert "block.reshape(5)" in remote.traceback
    # numpy's UFuncTypeError holds DType classes that do not pickle: the TypeError it is
    with pytest.raises(TypeError) as numpy_info:
        np.gcd(np.arange(6), 2.5)
    with pytest.raises(TypeError, match="did not contain a loop") as info:
        np.gcd(x, 2.5)
    assert isinstance(info.value, RemoteError)
    assert info.value.ename == type(numpy_info.value).__name__
    with pytest.raises(IndexError, match="out of bounds"):
        x[6]
    with pytest.raises(ValueError, match="would move data between engines"):
        sa.scatter(np.zeros((4, 6)), client=clean).reshape(6, 4)


def test_functions_without_a_parallel_form_run_on_one_engine(
    clean: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = np.arange(24.0).reshape(4, 6)
    x = sa.scatter(a, client=clean)
    monkeypatch.setattr(_blockwise, "WARN_BYTES", 0)
    with NoGather(clean), pytest.warns(sa.PerformanceWarning, match="numpy.diff"):
        d = np.diff(x, axis=0)
    assert isinstance(d, sa.DistArray)
    np.testing.assert_array_equal(sa.gather(d), np.diff(a, axis=0))
    with pytest.raises(NotImplementedError, match=r"numpy\.put changes its argument"):
        np.put(x, [0], [1.0])


def test_apply_and_vectorize_run_per_block(clean: Client) -> None:
    a = np.arange(20.0).reshape(10, 2)
    x = sa.scatter(a, client=clean)
    doubled = sa.apply(lambda block, k: block * k, x, 2)
    assert isinstance(doubled, sa.DistArray)
    np.testing.assert_array_equal(sa.gather(doubled), a * 2)
    sizes = sa.vectorize(len)(x)
    assert sizes == [4, 3, 3]
    sums = sa.apply(lambda block: block.sum(axis=0), x)
    np.testing.assert_array_equal(np.sum([sa.gather(s) for s in sums], axis=0), a.sum(axis=0))


def test_arrays_passed_to_tasks_travel_by_reference(clean: Client) -> None:
    """An array given to apply or push reaches the engine as an ndarray fetched from the
    engines holding its blocks; the client sends and receives no data for it."""
    a = np.arange(1_000_000.0).reshape(1000, 1000)
    x = sa.scatter(a, client=clean)
    r = sa.remote(a[:10], engine=0, client=clean)
    with NoGather(clean):
        total = clean[1].apply_sync(lambda v: float(v.sum()), x)
        kind = clean[2].apply_sync(lambda v: (type(v).__name__, v.shape), r)
        clean[1].push({"pushed": x}, block=True)
        clean[1].execute("row = float(pushed[999].sum())", block=True)
        row = clean[1].pull("row", block=True)
    assert total == a.sum()
    assert kind == ("ndarray", (10, 1000))
    assert row == a[999].sum()
    clean[1].execute("del pushed", block=True)


@pytest.mark.skipif(not shared_memory_enabled(), reason="needs /dev/shm, and SHOAL_SHM on")
def test_big_blocks_go_back_to_the_pool_only_once_no_view_uses_them() -> None:
    """Big blocks are made on the shared memory pool's pages: a block's segment goes
    back to the pool when the last array viewing it is gone, never before."""
    from shoal.arrays import _kernels

    def held() -> int:  # segments this process uses now
        return sum(n.startswith(f"shoal-u-{os.getpid()}-") for n in os.listdir("/dev/shm"))

    before = held()
    shape = (_kernels._SHARED_MIN // 8,)
    a = _kernels.new_block(shape, np.float64)
    a[:] = 1.0
    view = a[::2]
    del a
    assert held() == before + 1  # `view` still uses it
    b = _kernels.new_block(shape, np.float64)
    b[:] = 2.0
    assert not np.shares_memory(b, view)
    assert view.sum() == shape[0] // 2
    del view, b
    assert held() == before
    assert _kernels.new_block((10,), np.float64).base is None  # small: ordinary memory


def test_stacking_remote_arrays_makes_a_dist_array_where_they_are(clean: Client) -> None:
    parts = [np.full((2, 3), float(i)) for i in range(3)]
    remotes = [sa.remote(p, engine=e, client=clean) for e, p in zip([2, 0, 1], parts, strict=True)]
    with NoGather(clean):
        stacked = np.stack(remotes)
        joined = np.concatenate(remotes, axis=1)
    assert isinstance(stacked, sa.DistArray)
    assert (stacked.engines, stacked.axis) == ((2, 0, 1), 0)
    assert (joined.engines, joined.axis) == ((2, 0, 1), 1)
    np.testing.assert_array_equal(sa.gather(stacked), np.stack(parts))
    np.testing.assert_array_equal(sa.gather(joined), np.concatenate(parts, axis=1))


def test_arrays_on_a_dead_engine_fail_with_engine_died_error(
    tmp_path: Path, hub: ClusterStarter
) -> None:
    """A killed engine's blocks are lost: operations on them say so at once; arrays on
    the other engines work on."""
    with hub(tmp_path, 2) as (_, client):
        x = sa.scatter(np.arange(10.0), client=client)
        pid = client[1].apply_sync(os.getpid)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: 1 not in client.ids, timeout=10)
        with pytest.raises(EngineDiedError, match="engine 1 is gone"):
            x + 1
        y = sa.scatter(np.arange(4.0), client=client)
        np.testing.assert_array_equal(sa.gather(y + 1), np.arange(4.0) + 1)
