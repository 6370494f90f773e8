"""joblib's Parallel and scikit-learn's n_jobs on a real cluster (a hub process with 2
engines), through the "shoal" joblib backend."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest
from joblib import Parallel, delayed, parallel_config

from shoal.hub import Client, RemoteError, register_joblib_backend
from shoal.hub.testing import engine_pids, wait_until

# -- functions the engines run -----------------------------------------------------------


def square(x: int) -> int:
    return x * x


def pid(_: object = None) -> int:
    return os.getpid()


def meet(folder: str, n: int, i: int) -> int:
    """Note this process in ``folder``, wait until ``n`` processes did: only ``n`` calls
    running at once, each in a process of its own, all return."""
    Path(folder, f"{os.getpid()}.{i}").touch()
    deadline = time.monotonic() + 30
    while len({p.name.split(".")[0] for p in Path(folder).iterdir()}) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} processes never met in {folder}")
        time.sleep(0.01)
    return os.getpid()


def wait_for(path: str) -> str:
    """Return once ``path`` exists (30 s at most)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return "slow"


def touch(path: str) -> str:
    Path(path).touch()
    return "fast"


def spin(folder: str, i: int) -> int:
    """Note that call ``i`` started, then run for a minute (interruptible)."""
    Path(folder, f"started.{i}").touch()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return i


def fail_once_one_spins(folder: str) -> None:
    """Raise ValueError once a ``spin`` call started (so that one runs when we fail)."""
    deadline = time.monotonic() + 30
    while not any(p.name.startswith("started.") for p in Path(folder).iterdir()):
        if time.monotonic() > deadline:
            raise TimeoutError("no spin call started")
        time.sleep(0.01)
    raise ValueError("failed on purpose")


def nested(n: int) -> tuple[int, list[int], str]:
    """A Parallel call inside a task: where it runs, and with which backend."""
    from joblib.parallel import get_active_backend

    inner = Parallel(n_jobs=2)(delayed(os.getpid)() for _ in range(n))
    return os.getpid(), inner, type(get_active_backend()[0]).__name__


def _wait_free(client: Client) -> None:
    """Wait (10 s at most) until the engines run and queue nothing."""

    def idle() -> bool:
        status: dict[object, object] = client.queue_status()
        busy = [s["outstanding"] for e, s in status.items() if isinstance(s, dict)]
        return not any(busy) and not status["unassigned"]

    wait_until(idle, timeout=10, message=lambda: f"engines free: {client.queue_status()}")


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def shoal_backend(client: Client) -> Iterator[Client]:
    """The "shoal" backend registered and active on the test's client for the test."""
    register_joblib_backend()
    with parallel_config(backend="shoal", client=client):
        yield client


# -- results -----------------------------------------------------------------------------


def test_results_in_order(shoal_backend: Client) -> None:
    """Parallel returns every call's result in the order of the calls."""
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(300)) == [i * i for i in range(300)]
    assert Parallel(n_jobs=2, batch_size=1)(delayed(square)(i) for i in range(20)) == [
        i * i for i in range(20)
    ]


def test_runs_on_the_engines_of_the_current_client(client: Client) -> None:
    """Without client=, the backend uses the most recently connected open Client."""
    register_joblib_backend()
    with parallel_config(backend="shoal"):
        pids = Parallel(n_jobs=2, batch_size=1)(delayed(pid)() for _ in range(8))
    assert os.getpid() not in pids
    assert set(pids) <= set(engine_pids(client).values())


def test_a_view_runs_the_batches(client: Client, tmp_path: Path) -> None:
    """view= sends every batch through that view (its timeout applies); a view of another
    client than client= is refused."""
    register_joblib_backend()
    view = client.load_balanced_view()
    view.set_flags(timeout=0.5)
    with (
        parallel_config(backend="shoal", view=view),
        pytest.raises(TimeoutError) as info,  # the engine's, not joblib's own
    ):
        Parallel(n_jobs=2, batch_size=1)(delayed(spin)(str(tmp_path), i) for i in range(2))
    assert isinstance(info.value, RemoteError)
    _wait_free(client)
    other = Client(url_file=client.url_file)
    try:
        with (
            pytest.raises(ValueError, match="another Client"),
            parallel_config(backend="shoal", client=client, view=other.load_balanced_view()),
        ):
            pass
    finally:
        other.close()


def test_n_jobs_minus_one_uses_every_engine(shoal_backend: Client, tmp_path: Path) -> None:
    """n_jobs=-1 runs one call on each engine at once; -2 leaves one engine, which joblib
    runs in the calling process; more than the engines is cut to their number."""
    engines = set(engine_pids(shoal_backend).values())
    assert joblib.effective_n_jobs(-1) == len(engines) == 2
    assert joblib.effective_n_jobs(64) == 2
    met = Parallel(n_jobs=-1, batch_size=1)(
        delayed(meet)(str(tmp_path), len(engines), i) for i in range(len(engines))
    )
    assert set(met) == engines
    assert Parallel(n_jobs=-2)(delayed(pid)() for _ in range(3)) == [os.getpid()] * 3


def test_tiny_calls_are_batched(shoal_backend: Client) -> None:
    """joblib's auto-batching groups tiny calls: far fewer tasks than calls."""
    parallel = Parallel(n_jobs=2)
    assert parallel(delayed(square)(i) for i in range(5000)) == [i * i for i in range(5000)]
    assert parallel.n_dispatched_tasks == 5000
    assert parallel.n_dispatched_batches < 5000 / 10, parallel.n_dispatched_batches


def test_return_as_generator(shoal_backend: Client, tmp_path: Path) -> None:
    """return_as="generator" yields in call order; "generator_unordered" as calls end."""
    gen = Parallel(n_jobs=2, return_as="generator")(delayed(square)(i) for i in range(50))
    assert not isinstance(gen, list)
    assert list(gen) == [i * i for i in range(50)]
    for return_as in ("generator", "generator_unordered"):
        ran = tmp_path / f"{return_as}.fast"
        release = tmp_path / f"{return_as}.release"  # the slow call ends once it exists
        gen = Parallel(n_jobs=2, batch_size=1, return_as=return_as)(
            [delayed(wait_for)(str(release)), delayed(touch)(str(ran))]
        )
        if return_as == "generator_unordered":
            assert next(gen) == "fast"  # the slow call cannot end before the release
            release.touch()
            assert list(gen) == ["slow"]
        else:
            wait_until(ran.exists, timeout=30)  # the fast call ended first ...
            release.touch()
            assert list(gen) == ["slow", "fast"]  # ... yet the calls' order comes back


# -- errors ------------------------------------------------------------------------------


def test_errors_keep_their_type(shoal_backend: Client) -> None:
    """A call's exception is raised as its own type, and as a RemoteError."""
    with pytest.raises(ValueError, match="invalid literal") as info:
        Parallel(n_jobs=2)(delayed(int)(x) for x in ["1", "2", "x", "4"])
    assert isinstance(info.value, RemoteError)
    with pytest.raises(ZeroDivisionError):
        Parallel(n_jobs=2, batch_size=1)(delayed(divmod)(1, x) for x in [1, 0, 2])


def test_abort_on_error_stops_other_tasks(shoal_backend: Client, tmp_path: Path) -> None:
    """When a call fails, the calls still queued are dropped and those running are
    interrupted: the engines are free again at once, and the backend serves on."""
    folder = str(tmp_path)
    calls = [delayed(spin)(folder, 0), delayed(fail_once_one_spins)(folder)]
    calls += [delayed(spin)(folder, i) for i in range(1, 12)]
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="failed on purpose"):
        Parallel(n_jobs=2, batch_size=1)(calls)
    assert time.monotonic() - t0 < 30  # not the minute a spin call runs
    _wait_free(shoal_backend)
    started = [p for p in tmp_path.iterdir() if p.name.startswith("started.")]
    assert len(started) < 12  # the calls still queued never ran
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]


def test_closing_a_generator_stops_its_calls(shoal_backend: Client, tmp_path: Path) -> None:
    """A return_as="generator" closed early stops the calls still running or queued."""
    calls = [delayed(square)(3)] + [delayed(spin)(str(tmp_path), i) for i in range(6)]
    gen = Parallel(n_jobs=2, batch_size=1, return_as="generator")(calls)
    assert next(gen) == 9
    wait_until(lambda: list(tmp_path.iterdir()), message="a spin call to start")
    with pytest.warns(UserWarning, match="have been cancelled"):  # joblib's own note
        gen.close()
    _wait_free(shoal_backend)


def test_timeout_stops_the_calls(shoal_backend: Client, tmp_path: Path) -> None:
    """Parallel(timeout=) raises joblib's TimeoutError for calls that run too long, and
    stops them on their engines."""
    with pytest.raises(multiprocessing.TimeoutError):
        Parallel(n_jobs=2, batch_size=1, timeout=1)(
            delayed(spin)(str(tmp_path), i) for i in range(4)
        )
    _wait_free(shoal_backend)


def test_bad_backend_arguments_are_refused(client: Client) -> None:
    """Unknown backend arguments, and bad register_joblib_backend arguments, raise."""
    register_joblib_backend()
    with (
        pytest.raises(TypeError, match="unknown arguments \\['clinet'\\]"),
        parallel_config(backend="shoal", clinet=client),
    ):
        pass
    with (
        pytest.raises(ValueError, match="profile="),
        parallel_config(backend="shoal", client=client, profile="other"),
    ):
        pass
    with pytest.raises(ValueError, match="name"):
        register_joblib_backend("")
    with pytest.raises(TypeError, match="make_default"):
        register_joblib_backend(make_default="yes")  # type: ignore[arg-type]


def test_a_profile_without_a_cluster_says_so(client: Client) -> None:
    """profile= names the cluster to connect to; none there: FileNotFoundError."""
    register_joblib_backend()
    with (
        parallel_config(backend="shoal", profile="joblib-test-no-such-profile"),
        pytest.raises(FileNotFoundError, match="no cluster found"),
    ):
        Parallel(n_jobs=2)(delayed(square)(i) for i in range(5))


def test_register_under_another_name(client: Client) -> None:
    """register_joblib_backend(name) registers the backend under that name."""
    register_joblib_backend("shoal-other-name")
    try:
        with parallel_config(backend="shoal-other-name", client=client):
            assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
    finally:
        joblib.parallel.BACKENDS.pop("shoal-other-name", None)


# -- nesting -----------------------------------------------------------------------------


def test_nested_parallel_runs_on_the_engine(shoal_backend: Client) -> None:
    """A Parallel call inside a task runs in that engine's process (threads), never back
    on the cluster."""
    results = Parallel(n_jobs=2, batch_size=1)(delayed(nested)(4) for _ in range(2))
    engines = set(engine_pids(shoal_backend).values())
    for outer, inner, backend in results:
        assert outer in engines
        assert inner == [outer] * 4
        assert backend in {"ThreadingBackend", "SequentialBackend"}


# -- registration ------------------------------------------------------------------------


def _fresh(code: str) -> str:
    """What ``code`` prints in a new interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_import_registers_only_when_joblib_came_first() -> None:
    """import shoal.hub registers "shoal" when joblib is imported already, and does not
    import joblib itself."""
    assert _fresh("import joblib, shoal.hub; print('shoal' in joblib.parallel.BACKENDS)") == "True"
    assert _fresh("import sys, shoal.hub; print('joblib' in sys.modules)") == "False"


# -- scikit-learn ------------------------------------------------------------------------


def test_gridsearchcv_n_jobs_on_the_cluster(shoal_backend: Client) -> None:
    """GridSearchCV(n_jobs=-1) on the cluster finds the same parameters as n_jobs=1."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    x, y = make_classification(n_samples=200, n_features=8, random_state=0)
    grid = {"C": [0.01, 0.1, 1.0, 10.0], "fit_intercept": [True, False]}
    here = GridSearchCV(LogisticRegression(max_iter=500), grid, cv=3, n_jobs=1).fit(x, y)
    there = GridSearchCV(LogisticRegression(max_iter=500), grid, cv=3, n_jobs=-1).fit(x, y)
    assert there.best_params_ == here.best_params_
    assert there.best_score_ == pytest.approx(here.best_score_)
