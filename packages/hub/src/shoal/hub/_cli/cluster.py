"""Cluster: start a hub and its local engines from Python, and stop them again.

Theory of operation
-------------------
:meth:`Cluster.start` runs ``python -m shoal.hub -n N --profile-dir DIR`` as a child
process, its output (and that of the engines it starts) going to ``DIR/hub.log``, and
waits for the hub's ``shoal hub ready:`` line in that log. The hub always runs in a
session of its own, so that a Ctrl-C meant for the Python prompt does not reach the hub
nor its engines, and so that the hub's process group holds exactly the hub and the
engines it started (the last resort of :meth:`Cluster.stop` kills that group).

Nothing is left behind:

* A cluster that is not daemonized passes ``--parent-pid <this pid>`` to the hub, which
  shuts down (engines first) as soon as this process is gone, however it ended (even by
  SIGKILL); its engines in turn end when the hub is gone. On a normal exit an
  :mod:`atexit` hook stops it at once.
* :meth:`Cluster.stop` asks the hub to shut down, waits, then sends SIGTERM and finally
  SIGKILL to the hub's process group.
* A daemonized cluster outlives this process by design; ``shoal cluster stop`` ends it.

One hub per profile: :meth:`Cluster.start` refuses a profile whose connection file names
a live hub, and removes the files of a dead one. A lock file in the profile folder keeps
two starts from racing.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from .._client.client import Client
from .._profile import CLIENT_FILE, ENGINE_FILE
from .._profile import profile_dir as _profile_dir

__all__ = ["Cluster"]

LOG_FILE = "hub.log"
LOCK_FILE = ".cluster.lock"
READY = "shoal hub ready:"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1] not in ("Z", "X")
    except OSError:  # no /proc (not Linux), or it ended meanwhile
        pass
    return True


def read_hub_pid(path: str) -> int | None:
    """The hub pid recorded in a ``hub-client.json``, or None when there is none."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
        pid = doc.get("pid") if isinstance(doc, dict) else None
        return int(pid) if pid is not None else None
    except (OSError, ValueError, TypeError):
        return None


def remove_connection_files(folder: str) -> list[str]:
    """Remove a profile's hub connection files; returns the paths removed."""
    removed = []
    for name in (CLIENT_FILE, ENGINE_FILE):
        path = os.path.join(folder, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed


def kill_hub(pid: int, sig: int) -> None:
    """Send ``sig`` to the hub's process group when it leads one, else to the hub alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)  # the hub and the engines it started
        else:
            os.kill(pid, sig)


def _kill_group(pid: int) -> None:
    """SIGKILL the process group that our hub ``pid`` leads (started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def log_tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Cluster:
    """A hub and ``n`` engines, started and stopped from Python (ipyparallel's Cluster).

    Parameters
    ----------
    n : int, optional
        Engines to start; default: ``os.cpu_count()`` (ssh: the ``hosts``' counts).
    engines : {"local", "ssh", "mpi", "slurm"}
        Where the engines run: processes of this host (the default), other hosts over
        ssh, an ``mpiexec``, or a Slurm batch job. The hub starts them, and
        :meth:`add_engines` adds more the same way.
    hosts : mapping of str to int, or str
        ssh: host -> engines, e.g. ``{"nodeA": 2, "nodeB": 4}`` (or ``"nodeA:2,nodeB:4"``).
    ssh : sequence of str, or str
        ssh: the ssh command, e.g. ``["ssh", "-F", "my_config"]``; default ``ssh``.
    remote_python : str, optional
        ssh: the engines' Python on the hosts; default: this interpreter's path.
    shared_dir : bool
        ssh: the hosts see the profile folder at the same path, so nothing is copied.
    mpiexec : sequence of str, or str, optional
        mpi: the ``mpiexec`` command and its options; default: the ``mpiexec`` beside this
        Python (the ``mpich`` wheel's), else the one on PATH.
    partition, account, time : str, optional
        slurm: the job's partition, account and time limit (``"00:30:00"``).
    slurm_template : str, optional
        slurm: a file with the batch script to submit instead of shoal's.
    ip : str, optional
        The address the hub binds (default loopback). Any other turns on CurveZMQ for
        every connection, unless ``insecure``.
    location : str, optional
        What engines and clients dial when ``ip`` is a wildcard (``"0.0.0.0"``).
    curve : bool, optional
        Force CurveZMQ on (even on loopback) or off (beyond loopback, with ``insecure``).
    insecure : bool
        Allow a non-loopback ``ip`` without encryption (a trusted network only).
    profile : str
        The profile: the hub's files go to ``~/.shoal/profile_<profile>/`` (or under
        ``$SHOAL_DIR``), where :class:`Client` ``(profile=...)`` finds them.
    profile_dir : str, optional
        The folder for the hub's files, instead of the profile's.
    hwm : int, optional
        Load-balanced tasks an engine may hold at once (the hub's default: 2).
    allowed_failures : int, optional
        A task that was running on this many engines when each died fails with
        ``KilledEngineError`` (the hub's default: 3).
    log_level : str
        Log level of the hub and its engines; their logs go to ``<profile dir>/hub.log``.
    daemonize : bool
        Let the cluster outlive this process (``shoal cluster stop`` ends it). Otherwise
        the hub and its engines end when this process ends, however it ends.
    hub_args : sequence of str, optional
        More command-line arguments for the hub (``python -m shoal.hub --help``), after
        the ones this Cluster makes from its other options, so that they win; for
        example ``("--timeout", "2.0", "--store", "sqlite")``.

        .. versionadded:: 0.3

    Examples
    --------
    >>> with Cluster(n=4) as rc:                   # doctest: +SKIP
    ...     rc[:].apply_sync(os.getpid)
    [4242, 4243, 4244, 4245]

    >>> cluster = Cluster(n=4)                     # doctest: +SKIP
    >>> cluster.start()                            # doctest: +SKIP
    >>> rc = cluster.connect_client()              # doctest: +SKIP
    >>> cluster.stop()                             # doctest: +SKIP
    """

    def __init__(
        self,
        n: int | None = None,
        *,
        profile: str = "default",
        profile_dir: str | None = None,
        hwm: int | None = None,
        allowed_failures: int | None = None,
        log_level: str = "WARNING",
        daemonize: bool = False,
        hub_args: Sequence[str] = (),
        engines: str = "local",
        hosts: Mapping[str, int] | str | None = None,
        ssh: Sequence[str] | str | None = None,
        remote_python: str | None = None,
        shared_dir: bool = False,
        mpiexec: Sequence[str] | str | None = None,
        partition: str | None = None,
        account: str | None = None,
        time: str | None = None,
        slurm_template: str | None = None,
        ip: str | None = None,
        location: str | None = None,
        curve: bool | None = None,
        insecure: bool = False,
    ) -> None:
        self.engines = engines
        self.launch_args = _launch_args(
            engines,
            hosts=hosts,
            ssh=ssh,
            remote_python=remote_python,
            shared_dir=shared_dir,
            mpiexec=mpiexec,
            partition=partition,
            account=account,
            time=time,
            slurm_template=slurm_template,
        ) + _network_args(ip=ip, location=location, curve=curve, insecure=insecure)
        if n is None and engines == "ssh" and hosts is not None:
            n = sum(_hosts_dict(hosts).values())
        if n is None:
            n = os.cpu_count() or 1
        if n < 0:
            raise ValueError(f"n is a number of engines, at least 0; got {n}")
        self.n = n
        self.profile = profile
        self.profile_dir = os.path.abspath(profile_dir or _profile_dir(profile))
        self.client_file = os.path.join(self.profile_dir, CLIENT_FILE)
        if profile_dir is None:  # how messages name this profile
            self._option, self._connect_hint = f"--profile {profile}", f"profile={profile!r}"
        else:
            self._option = f"--profile-dir {self.profile_dir}"
            self._connect_hint = f"url_file={self.client_file!r}"
        if allowed_failures is not None and allowed_failures < 1:
            raise ValueError(f"allowed_failures must be at least 1, got {allowed_failures}")
        self.hwm = hwm
        self.allowed_failures = allowed_failures
        self.log_level = log_level
        self.daemonize = daemonize
        if isinstance(hub_args, str) or not all(isinstance(a, str) for a in hub_args):
            raise TypeError(
                "hub_args must be a sequence of str, one per command-line word, like"
                f" ('--timeout', '2.0'); got {hub_args!r}"
            )
        self.hub_args = tuple(hub_args)
        self.log_file = os.path.join(self.profile_dir, LOG_FILE)
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Client | None = None  # ours: waits, adds, removes, shuts down
        self._clients: list[Client] = []  # handed out by connect_client, closed by stop
        self._lock = threading.RLock()
        self._owner = os.getpid()
        self._failures_raised = 0  # launch failures wait_for_engines raised already

    # -- starting -----------------------------------------------------------------------
    @property
    def hub_pid(self) -> int | None:
        """The hub's pid (None before :meth:`start`)."""
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        """Whether the hub this Cluster started is still running."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> Cluster:
        """Start the hub and its engines; returns once the hub listens (engines may not yet).

        Parameters
        ----------
        timeout : float
            Seconds to wait for the hub to be ready.

        Returns
        -------
        Cluster
            This cluster.

        Raises
        ------
        RuntimeError
            When this Cluster already started a hub, when a live hub already runs on the
            profile, or when the hub failed to start (the message has its log).
        TimeoutError
            When the hub was not ready within ``timeout`` seconds (it is killed).
        """
        with self._lock:
            if self.proc is not None:
                state = "is running" if self.running() else "was stopped"
                raise RuntimeError(
                    f"this Cluster already started a hub (pid {self.proc.pid}), which {state};"
                    " make a new Cluster to start another"
                )
            os.makedirs(self.profile_dir, mode=0o700, exist_ok=True)
            lock_fd = os.open(
                os.path.join(self.profile_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600
            )
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)  # another start on this profile waits
                self._claim_profile()
                self.proc = self._launch()
                if not self.daemonize:
                    _started.add(self)
                self._wait_ready(self.proc, timeout)
            finally:
                os.close(lock_fd)  # releases the lock
        return self

    def _claim_profile(self) -> None:
        """Refuse a profile whose hub is alive; remove the files of a dead one."""
        pid = read_hub_pid(self.client_file)
        if pid is not None and pid_alive(pid):
            raise RuntimeError(
                f"a cluster is already running in {self.profile_dir} (hub pid {pid}); stop"
                f" it with `shoal cluster stop {self._option}`, connect to it with"
                f" Client({self._connect_hint}), or start this one on another"
                f" profile (if pid {pid} is not a shoal hub, remove {self.client_file})"
            )
        remove_connection_files(self.profile_dir)  # stale: their hub is gone

    def _launch(self) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "shoal.hub",
            "-n",
            str(self.n),
            "--profile-dir",
            self.profile_dir,
            "--log-level",
            self.log_level,
            "--engine-log-level",
            self.log_level,
        ]
        if self.hwm is not None:
            cmd += ["--hwm", str(self.hwm)]
        if self.allowed_failures is not None:
            cmd += ["--allowed-failures", str(self.allowed_failures)]
        if not self.daemonize:
            cmd += ["--parent-pid", str(os.getpid())]
        cmd += self.launch_args
        cmd += self.hub_args
        log_fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            return subprocess.Popen(  # noqa: S603 - our own module, our own arguments
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(log_fd)

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            try:
                with open(self.log_file, "rb") as f:
                    if READY.encode() in f.read():
                        return
            except FileNotFoundError:
                pass
            if code is not None:
                self._reap()
                raise RuntimeError(
                    f"the hub failed to start (it exited with code {code}); its log,"
                    f" {self.log_file}, ends with:\n{log_tail(self.log_file)}"
                )
            if time.monotonic() > deadline:
                self._reap()
                raise TimeoutError(
                    f"the hub was not ready within {timeout} s (killed it); its log,"
                    f" {self.log_file}, ends with:\n{log_tail(self.log_file)}"
                )
            time.sleep(0.02)

    def _reap(self) -> None:
        """After the hub failed: wait for it, remove what it left, forget it."""
        if self.proc is not None:
            _kill_group(self.proc.pid)
            self.proc.wait()
            self.proc = None  # start() may be tried again
        remove_connection_files(self.profile_dir)
        _started.discard(self)

    # -- using --------------------------------------------------------------------------
    def connect_client(
        self,
        *,
        timeout: float = 10.0,
        hub_timeout: float = 2.5,
        ping_period: float = 0.5,
        max_outstanding: int = 100_000,
        direct: bool = True,
        shm: bool | None = None,
    ) -> Client:
        """A new :class:`Client` connected to this cluster (closed by :meth:`stop`); the
        options are :class:`Client`'s."""
        with self._lock:
            self._check_started()
            client = Client(
                url_file=self.client_file,
                timeout=timeout,
                hub_timeout=hub_timeout,
                ping_period=ping_period,
                max_outstanding=max_outstanding,
                direct=direct,
                shm=shm,
            )
            self._clients.append(client)
            return client

    def _admin(self) -> Client:
        with self._lock:
            self._check_started()
            if self._client is None:
                self._client = Client(url_file=self.client_file)
            return self._client

    def _check_started(self) -> None:
        if self.proc is None:
            raise RuntimeError("this Cluster is not started; call start() first")
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"this Cluster's hub (pid {self.proc.pid}) has exited with code"
                f" {self.proc.returncode}; see {self.log_file}"
            )

    def wait_for_engines(self, n: int | None = None, timeout: float | None = 60.0) -> list[int]:
        """Wait until at least ``n`` engines (default: the ``n`` started) are registered.

        Returns
        -------
        list of int
            The ids of the engines registered.

        Raises
        ------
        TimeoutError
            When fewer registered within ``timeout`` seconds.
        RuntimeError
            When a launch of this cluster's engines ended before they registered (ssh
            could not connect, Slurm will not start the job), with how it ended and what
            it printed; each such failure is raised once.
        """
        admin = self._admin()
        try:
            return admin._wait_for_engines(
                self.n if n is None else n, timeout, self._failures_raised
            )
        except RuntimeError:
            self._failures_raised = len(admin.launch_failures)
            raise

    def add_engines(self, n: int = 1) -> list[int]:
        """Start ``n`` more engines with the cluster's launcher; returns the pids of the
        local processes that carry them (the engines, their ssh commands, one mpiexec;
        none for Slurm). They register soon after."""
        return self._admin().add_engines(n)

    def remove_engines(self, engine_ids: list[int] | tuple[int, ...]) -> list[int]:
        """Shut engines down and take them out of the cluster; returns the ids removed."""
        return self._admin().remove_engines(engine_ids)

    def start_and_connect(self, n: int | None = None, timeout: float | None = 60.0) -> Client:
        """Start, wait for ``n`` engines (default: all of them) and return a Client."""
        self.start()
        try:
            self.wait_for_engines(n, timeout)
            return self.connect_client()
        except BaseException:
            self.stop()
            raise

    start_cluster_sync = start
    start_and_connect_sync = start_and_connect

    # -- stopping -----------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        """Stop the hub and its engines; idempotent.

        Asks the hub to shut down (it stops its engines), waits up to ``timeout``
        seconds, then sends SIGTERM and, a few seconds later, SIGKILL to the hub's
        process group. Clients made by :meth:`connect_client` are closed.
        """
        with self._lock:
            proc = self.proc
            if proc is None:
                return
            if proc.poll() is None:
                asked = False
                if self._client is not None or self._clients:
                    with contextlib.suppress(Exception):  # dead or deaf: signals follow
                        client = self._client or self._clients[0]
                        client.shutdown(timeout=min(timeout, 5.0))
                        asked = True
                if not asked:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)  # the hub shuts down as it does
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(3.0)
            _kill_group(proc.pid)  # whatever is left of its group
            proc.wait()
            self.close_clients()
            if read_hub_pid(self.client_file) == proc.pid:
                remove_connection_files(self.profile_dir)  # left by a killed hub
            _started.discard(self)

    stop_cluster_sync = stop

    def close_clients(self) -> None:
        """Close the clients this Cluster made; the cluster keeps running."""
        with self._lock:
            clients = [c for c in (self._client, *self._clients) if c is not None]
            self._client = None
            self._clients = []
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()

    def __enter__(self) -> Client:
        """Start, wait for the engines and return a connected :class:`Client`."""
        return self.start_and_connect()

    def __exit__(self, *exc: object) -> None:
        """Stop the cluster."""
        self.stop()

    def __repr__(self) -> str:
        if self.proc is None:
            state = "not started"
        elif self.proc.poll() is None:
            state = f"hub pid {self.proc.pid}"
        else:
            state = f"stopped (hub exited with {self.proc.returncode})"
        return f"<shoal.hub.Cluster n={self.n} profile_dir={self.profile_dir!r}: {state}>"


_started: set[Cluster] = set()  # clusters to stop when this process exits


def _hosts_dict(hosts: Mapping[str, int] | str) -> dict[str, int]:
    if isinstance(hosts, str):
        found: dict[str, int] = {}
        for part in hosts.split(","):
            name, _, count = part.strip().partition(":")
            found[name] = found.get(name, 0) + (int(count) if count.isdigit() else 1)
        return found
    return dict(hosts)


def _words(command: Sequence[str] | str) -> str:
    return command if isinstance(command, str) else shlex.join(command)


def _launch_args(
    engines: str,
    *,
    hosts: Mapping[str, int] | str | None,
    ssh: Sequence[str] | str | None,
    remote_python: str | None,
    shared_dir: bool,
    mpiexec: Sequence[str] | str | None,
    partition: str | None,
    account: str | None,
    time: str | None,
    slurm_template: str | None,
) -> list[str]:
    """The hub's command-line words for the launcher options; an option given for
    another launcher than ``engines`` is refused (it would do nothing)."""
    given: dict[str, dict[str, object]] = {
        "ssh": {
            "hosts": hosts,
            "ssh": ssh,
            "remote_python": remote_python,
            "shared_dir": shared_dir,
        },
        "mpi": {"mpiexec": mpiexec},
        "slurm": {
            "partition": partition,
            "account": account,
            "time": time,
            "slurm_template": slurm_template,
        },
    }
    for kind, options in given.items():
        stray = [name for name, value in options.items() if value not in (None, False)]
        if stray and kind != engines:
            raise ValueError(
                f"{', '.join(stray)} {'is' if len(stray) == 1 else 'are'} for"
                f" engines={kind!r}, not engines={engines!r}"
            )
    args = ["--engines", engines]
    if engines == "ssh":
        if hosts is None:
            raise ValueError('engines="ssh" needs hosts, e.g. hosts={"nodeA": 2, "nodeB": 4}')
        args += ["--hosts", ",".join(f"{h}:{c}" for h, c in _hosts_dict(hosts).items())]
        if ssh is not None:
            args += ["--ssh", _words(ssh)]
        if remote_python is not None:
            args += ["--remote-python", remote_python]
        if shared_dir:
            args.append("--shared-dir")
    if mpiexec is not None:
        args += ["--mpiexec", _words(mpiexec)]
    for flag, value in (
        ("--partition", partition),
        ("--account", account),
        ("--time", time),
        ("--slurm-template", slurm_template),
    ):
        if value is not None:
            args += [flag, value]
    return args


def _network_args(
    *, ip: str | None, location: str | None, curve: bool | None, insecure: bool
) -> list[str]:
    """The hub's command-line words for where it listens and how it is reached."""
    args = [] if ip is None else ["--ip", ip]
    if location is not None:
        args += ["--location", location]
    if curve is not None:
        args.append("--curve" if curve else "--no-curve")
    if insecure:
        args.append("--insecure")
    return args


def _stop_all() -> None:
    for cluster in list(_started):
        if cluster._owner == os.getpid():  # not in a forked child
            with contextlib.suppress(Exception):
                cluster.stop()


atexit.register(_stop_all)
