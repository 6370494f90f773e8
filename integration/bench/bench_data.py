"""The data plane (issue 6): large arrays between the client and 2 engines of one host.

* W3: push and pull of a 64 MiB and a 512 MiB array to one engine (pull of the pushed
  array, and of one the engine made), against numpy's memcpy bandwidth and Ray
  (``ray.put`` + a task on a worker that reads it; a task returning the array +
  ``ray.get``), in the same run.
* W4: scatter of a 512 MiB array to 2 engines and gather back, against Ray (two halves
  put and read by two tasks; two tasks returning halves).
* An engine-to-engine move of a 512 MiB block (a proxy argument, fetched by the other
  engine) against the same move through the client (gather, then push).
* Broadcast of 512 MiB to both engines against one push.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from _common import MiB, Reaper, Row, Stats, interleave_all, note
from bench_hub import ENGINES, TRANSFER_REPEATS, _shoal_cluster

from shoal.hub import Client, empty_shared, gather, scatter


def _gbps(nbytes: int, run: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    run()
    return nbytes / (time.perf_counter() - t0) / 1e9


def _memcpy(source: np.ndarray[Any, Any]) -> float:
    target = np.empty_like(source)
    target[:] = 0  # its pages exist before the clock starts
    return _gbps(source.nbytes, lambda: np.copyto(target, source))


@contextlib.contextmanager
def _ray() -> Iterator[Any]:
    import ray

    with Reaper() as reaper:
        ray.init(
            num_cpus=ENGINES, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
        )
        try:
            yield ray
        finally:
            reaper.snapshot()
            ray.shutdown()


def _ray_fns(ray: Any, source: np.ndarray[Any, Any]) -> dict[str, Callable[[], float]]:
    @ray.remote
    def last(a: Any) -> float:  # reads the array where the worker maps it
        return float(a[-1])

    @ray.remote
    def make(n: int) -> Any:
        return np.ones(n, dtype=np.uint8)

    n = source.nbytes
    half = n // 2

    def put() -> None:
        assert ray.get(last.remote(ray.put(source))) == 1.0

    def get() -> None:
        assert ray.get(make.remote(n)).nbytes == n

    def scatter2() -> None:
        refs = [ray.put(source[:half]), ray.put(source[half:])]
        assert ray.get([last.remote(r) for r in refs]) == [1.0, 1.0]

    def gather2() -> None:
        parts = ray.get([make.remote(half), make.remote(n - half)])
        assert sum(p.nbytes for p in parts) == n

    ray.get([last.remote(np.ones(10)), make.remote(10)])  # workers up
    return {
        "put": functools.partial(_gbps, n, put),
        "get": functools.partial(_gbps, n, get),
        "scatter": functools.partial(_gbps, n, scatter2),
        "gather": functools.partial(_gbps, n, gather2),
    }


def _w3(cfg: Any, rc: Client, ray: Any | None, mib: int) -> list[Row]:
    source = np.ones(mib * MiB, dtype=np.uint8)
    n = source.nbytes
    view = rc[rc.ids[0]]

    def push() -> None:
        view.push({"a": source}, block=True)

    def pull() -> None:
        out = view.pull("a", block=True)
        assert out.nbytes == n
        assert out[-1] == 1

    def pull_made() -> None:
        out = view.pull("m", block=True)
        assert out.nbytes == n
        assert out[-1] == 1

    view.push({"n": n}, block=True)
    view.execute("import numpy as np; m = np.ones(n, dtype=np.uint8)", block=True)
    fns = [functools.partial(_gbps, n, f) for f in (push, pull, pull_made)]
    fns.append(functools.partial(_memcpy, source))
    ray_fns = _ray_fns(ray, source) if ray is not None else {}
    fns += [ray_fns[k] for k in ("put", "get") if k in ray_fns]
    repeats = min(cfg.repeats, TRANSFER_REPEATS + 2)
    note(f"W3 push/pull {mib} MiB vs memcpy and Ray: {repeats} repeats each")
    s_push, s_pull, s_made, b_copy, *b_ray = interleave_all(fns, repeats)
    view.execute("del a, m", block=True)
    rows = []
    for verb, s, ray_verb in (("push", s_push, 0), ("pull", s_pull, 1), ("pull made", s_made, 1)):
        rows.append(
            Row(
                name=f"W3 {verb} {mib} MiB vs memcpy",
                unit="GB/s",
                shoal=s,
                baseline_name="numpy memcpy",
                baseline=b_copy,
                target="s/b >= 0.5",
                target_ok=s.median >= 0.5 * b_copy.median,
                note={
                    "push": "one copy into a reused segment (on up to 4 threads), until the"
                    " engine replied",
                    "pull": "the pushed array is in a segment already: its pages are shared"
                    " copy-on-write, no copy",
                    "pull made": "an array the engine made (ordinary memory): one copy",
                }[verb],
            )
        )
        if b_ray:
            b = b_ray[ray_verb]
            rows.append(
                Row(
                    name=f"W3 {verb} {mib} MiB vs Ray",
                    unit="GB/s",
                    shoal=s,
                    baseline_name="Ray put+task read" if verb == "push" else "Ray task+get",
                    baseline=b,
                    target="s/b >= 1",
                    target_ok=s.median >= b.median,
                )
            )
    return rows


def _w4(cfg: Any, rc: Client, ray: Any | None, mib: int) -> list[Row]:
    source = np.ones(mib * MiB, dtype=np.uint8)
    n = source.nbytes
    both = rc[:]

    def scatter_() -> None:
        both.scatter("part", source, block=True)

    def gather_() -> None:
        out = both.gather("part", block=True)
        assert out.nbytes == n

    shared = empty_shared(n, np.uint8)  # made in shared memory: scattered with no copy
    shared[:] = 1

    def scatter_shared() -> None:
        both.scatter("part", shared, block=True)

    fns = [functools.partial(_gbps, n, f) for f in (scatter_, gather_, scatter_shared)]
    ray_fns = _ray_fns(ray, source) if ray is not None else {}
    fns += [ray_fns[k] for k in ("scatter", "gather") if k in ray_fns]
    repeats = min(cfg.repeats, TRANSFER_REPEATS + 2)
    note(f"W4 scatter/gather {mib} MiB over {ENGINES} engines vs Ray: {repeats} repeats each")
    s_scatter, s_gather, s_shared, *b_ray = interleave_all(fns, repeats)
    both.execute("del part", block=True)
    if not b_ray:
        return []
    return [
        Row(
            name=f"W4 {verb} {mib} MiB to {ENGINES} engines vs Ray",
            unit="GB/s",
            shoal=s,
            baseline_name=f"Ray {verb.split()[0]} of 2 halves",
            baseline=b,
            target="s/b >= 1",
            target_ok=s.median >= b.median,
            note=why,
        )
        for verb, s, b, why in (
            ("scatter", s_scatter, b_ray[0], "an ordinary array: one copy"),
            ("gather", s_gather, b_ray[1], "the parts are shared; joined by one copy"),
            ("scatter shared", s_shared, b_ray[0], "an array made by empty_shared: no copy"),
        )
    ]


def _moves(cfg: Any, rc: Client, mib: int) -> list[Row]:
    n = mib * MiB
    first, second = rc.ids[0], rc.ids[1]
    block = scatter(np.ones(n, dtype=np.uint8), destination=first, client=rc)
    holder = scatter({}, destination=second, client=rc)
    source = np.ones(n, dtype=np.uint8)

    def direct() -> None:
        holder["x"] = block  # a proxy argument: the second engine fetches it from the first
        holder.clear()

    def via_client() -> None:
        holder["x"] = gather(block)  # to the client, then to the second engine
        holder.clear()

    def broadcast() -> None:
        rc[:].push({"b": source}, block=True)

    def one_push() -> None:
        rc[first].push({"b": source}, block=True)

    repeats = min(cfg.repeats, TRANSFER_REPEATS + 2)
    note(f"engine to engine, and broadcast, {mib} MiB: {repeats} repeats each")
    e2e, through, bcast, single = interleave_all(
        [
            functools.partial(_gbps, n, direct),
            functools.partial(_gbps, n, via_client),
            functools.partial(_gbps, n, broadcast),
            functools.partial(_gbps, n, one_push),
        ],
        repeats,
    )
    rc[:].execute("b = None", block=True)
    return [
        Row(
            name=f"engine-to-engine move {mib} MiB",
            unit="GB/s",
            shoal=e2e,
            baseline_name="the same move through the client",
            baseline=through,
            note="a proxy argument fetched by the engine that runs the call",
        ),
        Row(
            name=f"broadcast {mib} MiB to {ENGINES} engines",
            unit="GB/s",
            shoal=bcast,
            baseline_name="one push to one engine",
            baseline=single,
            note="GB/s of the array's size: on one host every engine maps the same segment"
            " copy-on-write (one copy for all), so the ideal ratio is 1",
        ),
    ]


def bench_data(cfg: Any) -> list[Row]:
    """The data plane: W3, W4, engine to engine, broadcast."""
    sizes = [64, cfg.hub_mib] if cfg.hub_mib > 64 else [cfg.hub_mib]
    with _shoal_cluster() as rc, contextlib.ExitStack() as stack:
        ray = None
        try:
            ray = stack.enter_context(_ray())
        except Exception as exc:  # a peer that will not start here is reported, not fatal
            note(f"Ray could not start: {type(exc).__name__}: {exc}")
        rows: list[Row] = []
        for mib in sizes:
            rows += _w3(cfg, rc, ray, mib)
        rows += _w4(cfg, rc, ray, cfg.hub_mib)
        rows += _moves(cfg, rc, cfg.hub_mib)
        if not rows:
            rows.append(Row("data plane", "GB/s", Stats.of([0.0]), "none", Stats.of([1.0])))
    return rows
