"""``shoal``: start, stop, list and inspect clusters from the command line.

::

    shoal cluster start [-n 4] [--profile P] [--daemonize]
    shoal cluster stop [--profile P]
    shoal cluster list
    shoal status [--profile P]
    shoal logs [--profile P] [-n LINES] [-f] [--hub]
    shoal engine connect-info ID [--profile P] [--file PATH]   # for jupyter console
    shoal engine interrupt ID [--profile P]
    shoal hub ...                  # the hub process itself (python -m shoal.hub)

Exit status: 0 on success, 1 when the work failed (no cluster there, the hub did not
start, ...), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from shoal.engine import MsgType
from shoal.wire import this_host, write_private_file

from .._client.client import Client
from .._profile import CLIENT_FILE, ENGINES_LOG, profile_dir, shoal_dir
from .cluster import (
    LOG_FILE,
    Cluster,
    kill_hub,
    log_tail,
    pid_alive,
    read_hub_pid,
    remove_connection_files,
)

__all__ = ["main"]


class CommandError(Exception):
    """A failure to report in one line, with exit status 1."""


def _say(text: str) -> None:
    print(text, flush=True)


def _folder(args: argparse.Namespace) -> tuple[str, str, str]:
    """The profile's name (for messages), its folder, and the option that names it."""
    if args.profile_dir:
        folder = os.path.abspath(args.profile_dir)
        return folder, folder, f"--profile-dir {folder}"
    try:
        return args.profile, profile_dir(args.profile), f"--profile {args.profile}"
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


def _connect(folder: str, name: str, option: str, timeout: float) -> Client:
    """A client of the cluster in ``folder``, or a CommandError saying why not."""
    path = os.path.join(folder, CLIENT_FILE)
    pid = read_hub_pid(path)
    if pid is None:
        raise CommandError(
            f"no cluster is running on profile {name} (no {path}); start one with"
            f" `shoal cluster start -n 4 {option}`"
        )
    if not pid_alive(pid):
        raise CommandError(
            f"no cluster is running on profile {name}: its hub (pid {pid}) is gone, and"
            f" {path} is stale (`shoal cluster stop {option}` removes it)"
        )
    try:
        return Client(url_file=path, timeout=timeout)
    except Exception as exc:
        raise CommandError(f"could not connect to the cluster on profile {name}: {exc}") from exc


# -- shoal cluster start --------------------------------------------------------------------
def _hosts_count(hub_args: Sequence[str]) -> int | None:
    """The engines ``--hosts nodeA:2,nodeB:4`` asks for (None: no --hosts)."""
    for i, word in enumerate(hub_args):
        value = hub_args[i + 1] if word == "--hosts" and i + 1 < len(hub_args) else None
        if word.startswith("--hosts="):
            value = word.partition("=")[2]
        if value is not None:
            parts = [p.partition(":") for p in value.split(",") if p]
            return sum(int(c) if c.isdigit() else 1 for _, _, c in parts)
    return None


def _cluster_start(args: argparse.Namespace) -> int:
    name, folder, option = _folder(args)
    engines, n = args.engines, args.n
    if engines.isdigit():  # `--engines 4`, the old spelling of `-n 4`
        engines, n = "local", int(engines)
    if n is None and engines == "ssh":
        n = _hosts_count(args.hub_args)
    cluster = Cluster(
        n,
        profile=args.profile,
        profile_dir=args.profile_dir,
        hwm=args.hwm,
        log_level=args.log_level,
        daemonize=args.daemonize,
        engines=engines,
        hub_args=args.hub_args,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())  # stop, even while it starts
    keep = False
    try:
        try:
            cluster.start(timeout=args.timeout)
            ids = _wait_for_engines(cluster, args.timeout, stop)
        except (RuntimeError, TimeoutError) as exc:  # their messages name the log
            raise CommandError(str(exc)) from exc
        except ConnectionError as exc:  # HubLost: it died meanwhile
            raise CommandError(f"{exc}; see {cluster.log_file}") from exc
        if ids is None:
            print("shoal: interrupted: stopping the cluster", file=sys.stderr)
            return 1
        pid = cluster.hub_pid
        if args.daemonize:
            _say(
                f"cluster started on profile {name}: hub pid {pid}, {len(ids)} engines"
                f" (log: {cluster.log_file}); stop it with `shoal cluster stop {option}`"
            )
            _say(folder)
            keep = True
            return 0
        _say(
            f"cluster running on profile {name}: hub pid {pid}, {len(ids)} engines"
            f" (log: {cluster.log_file}); Ctrl-C stops it"
        )
        while not stop.is_set() and cluster.running():
            stop.wait(0.2)
        if not stop.is_set():
            code = cluster.proc.returncode if cluster.proc is not None else None
            _say(f"the hub exited (code {code}); see {cluster.log_file}")
            return 0 if code == 0 else 1
        _say("stopping the cluster")
        return 0
    finally:
        if keep:  # the daemon stays; only our connection goes
            cluster.close_clients()
        else:
            cluster.stop()


def _wait_for_engines(cluster: Cluster, timeout: float, stop: threading.Event) -> list[int] | None:
    """The engines' ids once all registered; None when a signal came first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return cluster.wait_for_engines(cluster.n, 0.2)
        except TimeoutError:
            if stop.is_set():
                return None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"fewer than {cluster.n} engines registered within {timeout} s; see"
                    f" {cluster.log_file}:\n{log_tail(cluster.log_file)}"
                ) from None


# -- shoal cluster stop ---------------------------------------------------------------------
def _cluster_stop(args: argparse.Namespace) -> int:
    name, folder, _ = _folder(args)
    path = os.path.join(folder, CLIENT_FILE)
    pid = read_hub_pid(path)
    if pid is None:
        raise CommandError(f"no cluster is running on profile {name} (no {path})")
    if not pid_alive(pid):
        removed = remove_connection_files(folder)
        raise CommandError(
            f"no cluster is running on profile {name}: its hub (pid {pid}) is gone;"
            f" removed its stale files ({', '.join(removed)})"
        )
    asked = False
    wait = min(args.timeout, 5.0)
    with contextlib.suppress(Exception), Client(url_file=path, timeout=wait) as client:
        client.shutdown(timeout=wait)  # when the hub does not answer, signals follow
        asked = True
    how = _wait_gone(pid, args.timeout, "stopped") if asked else None
    if how is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)  # the hub stops its engines, removes its files
        how = _wait_gone(pid, min(args.timeout, 5.0), "stopped by SIGTERM")
    if how is None:
        kill_hub(pid, signal.SIGKILL)  # with its process group: its engines
        how = _wait_gone(pid, 3.0, "killed (SIGKILL)")
    if how is None:
        raise CommandError(f"the hub of profile {name} (pid {pid}) survived SIGKILL")
    if read_hub_pid(path) == pid:
        remove_connection_files(folder)
    _say(f"cluster on profile {name} {how} (hub pid {pid})")
    return 0


def _wait_gone(pid: int, timeout: float, how: str) -> str | None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return how


# -- shoal cluster list ---------------------------------------------------------------------
def _cluster_list(args: argparse.Namespace) -> int:
    root = shoal_dir()
    try:
        entries = sorted(os.listdir(root))
    except FileNotFoundError:
        entries = []
    rows = []
    for entry in entries:
        folder = os.path.join(root, entry)
        path = os.path.join(folder, CLIENT_FILE)
        if not entry.startswith("profile_") or not os.path.exists(path):
            continue
        pid = read_hub_pid(path)
        engines = "-"
        if pid is None:
            state = "unreadable"
        elif not pid_alive(pid):
            state = "stale"
        else:
            state = "alive"
            try:
                with Client(url_file=path, timeout=args.timeout) as client:
                    engines = str(len(client.ids))
            except Exception:
                engines = "?"
        rows.append([entry[len("profile_") :], str(pid or "?"), state, engines, folder])
    if not rows:
        _say(f"no clusters under {root}")
        return 0
    _table(["PROFILE", "HUB PID", "STATE", "ENGINES", "FOLDER"], rows)
    return 0


# -- shoal status ---------------------------------------------------------------------------
def _status(args: argparse.Namespace) -> int:
    name, folder, option = _folder(args)
    with _connect(folder, name, option, args.timeout) as client:
        try:
            queues: dict[Any, Any] = dict(client.queue_status())
        except Exception as exc:
            raise CommandError(f"the hub of profile {name} did not answer: {exc}") from exc
        ids = sorted(k for k in queues if isinstance(k, int))
        rss = _memory(client, ids, queues)
        _say(f"profile {name}: hub pid {client.hub_pid}, {len(ids)} engines ({folder})")
        rows = [
            [
                str(i),
                str(queues[i].get("pid", "?")),
                str(queues[i].get("hostname", "?")),
                str(queues[i].get("outstanding", "?")),
                rss.get(i, "?"),
            ]
            for i in ids
        ]
        if rows:
            _table(["ENGINE", "PID", "HOST", "LOAD", "MEMORY RSS"], rows)
        _say(f"unassigned tasks: {queues.get('unassigned', '?')}")
    return 0


def _memory(client: Client, ids: list[int], queues: dict[Any, Any]) -> dict[int, str]:
    """Each engine's resident memory: as it reports it, else from /proc when it is local."""
    rss: dict[int, str] = {}
    for i in ids:
        value: Any = None
        with contextlib.suppress(Exception):
            value = client[i].status()["memory_rss"]
        if value is None and queues[i].get("hostname") == this_host():
            value = _local_rss(int(queues[i].get("pid", 0)))
        if value is not None:
            rss[i] = _size(int(value))
    return rss


def _local_rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{value:.1f} {unit}"


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        _say("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- shoal engine connect-info -------------------------------------------------------------
#: The fields of a Jupyter connection file, as the engine's gateway reports them.
_KERNEL_FIELDS = (
    "transport",
    "ip",
    "shell_port",
    "iopub_port",
    "stdin_port",
    "control_port",
    "hb_port",
    "key",
    "signature_scheme",
    "kernel_name",
)


def _check_engine(client: Client, engine_id: int, profile: str) -> None:
    if engine_id not in client.ids:
        raise CommandError(
            f"engine {engine_id} is not in the cluster on profile {profile}; its engines:"
            f" {client.ids}"
        )


def _connect_info(args: argparse.Namespace) -> int:
    name, folder, option = _folder(args)
    content: dict[str, Any] = {"ip": args.ip}
    if args.insecure:
        content["insecure"] = True
    with _connect(folder, name, option, args.timeout) as client:
        _check_engine(client, args.id, name)
        try:
            reply = dict(
                client._control(args.id, MsgType.JUPYTER_GATEWAY_REQUEST, content).get(args.timeout)
            )
            queues: dict[Any, Any] = dict(client.queue_status())
            host = queues.get(args.id, {}).get("hostname")
        except Exception as exc:
            raise CommandError(f"engine {args.id} opened no Jupyter gateway: {exc}") from exc
    if host not in (None, this_host()) and reply.get("ip") == "127.0.0.1":
        print(  # the file works there, or through a tunnel: say so rather than fail later
            f"shoal: engine {args.id} runs on {host}: its gateway listens on that host's"
            " loopback; use the file there, tunnel its ports (ssh -L), or ask again with"
            " --ip outbound --insecure on a trusted network",
            file=sys.stderr,
        )
    info = {k: reply[k] for k in _KERNEL_FIELDS if k in reply}
    missing = set(_KERNEL_FIELDS) - set(info)
    if missing:
        raise CommandError(f"engine {args.id}'s gateway reply lacks {sorted(missing)}: {reply}")
    path = args.file or os.path.join(folder, f"kernel-engine-{args.id}.json")
    # The key in it lets whoever reads the file run code on the engine: mode 0600.
    written = write_private_file(path, json.dumps(info, indent=1).encode() + b"\n")
    _say(os.path.abspath(written))
    return 0


def _interrupt(args: argparse.Namespace) -> int:
    name, folder, option = _folder(args)
    with _connect(folder, name, option, args.timeout) as client:
        _check_engine(client, args.id, name)
        try:
            reply = client._control(args.id, MsgType.INTERRUPT_REQUEST, {}).get(args.timeout)
        except Exception as exc:
            raise CommandError(f"engine {args.id} did not answer the interrupt: {exc}") from exc
    done = "interrupted what it ran" if reply.get("interrupted") else "ran nothing to interrupt"
    _say(f"engine {args.id} {done}")
    return 0


# -- shoal logs -----------------------------------------------------------------------------
_FOLLOW_POLL_S = 0.2


def _logs(args: argparse.Namespace) -> int:
    name, folder, option = _folder(args)
    path = os.path.join(folder, LOG_FILE if args.hub else ENGINES_LOG)
    if not os.path.exists(path):
        what = "hub's log" if args.hub else "engines' log"
        raise CommandError(
            f"no {what} on profile {name} (no {path}): no cluster has run there"
            f" since shoal wrote one; start one with `shoal cluster start {option}`"
        )
    from .._server.logs import escape_unsafe  # noqa: PLC0415 - only this command needs it

    try:
        lines, end = _last_lines(path, args.lines)
        if not args.hub and len(lines) < args.lines:  # the rest before the last rotation
            lines = _last_lines(path + ".1", args.lines - len(lines))[0] + lines
        for line in lines:
            _say(escape_unsafe(line.decode("utf-8", "replace")))
        if args.follow:
            _follow(path, end, escape_unsafe)  # from where the lines shown end: none missed
    except KeyboardInterrupt:  # how one stops --follow
        return 0
    except BrokenPipeError:  # `shoal logs | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing more to flush at exit
        os.close(devnull)
    return 0


def _last_lines(path: str, n: int) -> tuple[list[bytes], int]:
    """The last ``n`` whole lines of a file, read from its end, and the offset where
    they end (([], 0) when there is no file)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after a seek loop
    except FileNotFoundError:
        return [], 0
    with f:
        at = size = f.seek(0, os.SEEK_END)
        data = b""
        while at > 0 and data.count(b"\n") <= n:
            step = min(at, 65536)
            at -= step
            f.seek(at)
            data = f.read(step) + data
    end = size - len(data) + data.rfind(b"\n") + 1  # a line still being written: later
    lines = data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]
    if at > 0:
        lines = lines[1:]  # the first may be the tail of a line before the block
    return (lines[-n:] if n > 0 else []), end


def _follow(path: str, offset: int, escape: Callable[[str], str]) -> None:
    """Print the lines appended to ``path`` from ``offset`` on, until interrupted (a
    rotated or truncated file is read again from its start)."""
    f = open(path, "rb")  # noqa: SIM115 - replaced when the file is rotated
    try:
        f.seek(offset)
        partial = b""
        while True:
            chunk = f.read(65536)
            if chunk:
                *lines, partial = (partial + chunk).split(b"\n")
                for line in lines:
                    _say(escape(line.decode("utf-8", "replace")))
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if st is not None and (
                st.st_ino != os.fstat(f.fileno()).st_ino or st.st_size < f.tell()
            ):
                f.close()
                f = open(path, "rb")  # noqa: SIM115
                partial = b""
                continue
            time.sleep(_FOLLOW_POLL_S)
    finally:
        f.close()


# -- parser ---------------------------------------------------------------------------------
def _add_profile(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--profile", default="default", help="the cluster's profile (default: %(default)s)"
    )
    where.add_argument("--profile-dir", default=None, help="its folder, instead of a profile")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal", description="Start, stop and inspect shoal clusters."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cluster = commands.add_parser("cluster", help="start, stop or list clusters")
    actions = cluster.add_subparsers(dest="action", metavar="ACTION", required=True)

    start = actions.add_parser(
        "start",
        help="start a hub and its engines",
        description=(
            "Start a hub and its engines. Options of the hub itself (`shoal hub --help`:"
            " --hosts, --ssh, --mpiexec, --partition, --ip, ...) are passed on to it."
        ),
    )
    start.add_argument(
        "-n", dest="n", type=int, default=None, help="engines (default: cores; ssh: --hosts)"
    )
    start.add_argument(
        "--engines",
        default="local",
        help="where: local (default), ssh, mpi or slurm (or a number: -n's old spelling)",
    )
    _add_profile(start)
    start.add_argument(
        "--daemonize", action="store_true", help="return once it runs; it outlives this command"
    )
    start.add_argument("--hwm", type=int, default=None, help="tasks queued per engine")
    start.add_argument("--log-level", default="WARNING", help="of the hub and its engines")
    start.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the engines"
    )
    start.set_defaults(run=_cluster_start)

    stop = actions.add_parser("stop", help="stop a cluster and its engines")
    _add_profile(stop)
    stop.add_argument(
        "--timeout", type=float, default=10.0, help="seconds before SIGTERM, then SIGKILL"
    )
    stop.set_defaults(run=_cluster_stop)

    listing = actions.add_parser("list", help="the clusters of every profile")
    listing.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each hub")
    listing.set_defaults(run=_cluster_list)

    status = commands.add_parser("status", help="a cluster's engines and their load")
    _add_profile(status)
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    status.set_defaults(run=_status)

    logs = commands.add_parser(
        "logs",
        help="the engines' log records (or the hub's log, with --hub)",
        description=(
            f"Print the last lines of the engines' log: the records the engines' loggers"
            f" sent the hub, which writes them to {ENGINES_LOG} in the profile folder"
            f" (the level: `shoal cluster start --log-level`). The hub's own log is"
            f" {LOG_FILE} in the same folder when `shoal cluster start` or Cluster"
            f" started it (it holds the hub's and the engines' stderr); --hub prints it."
        ),
    )
    _add_profile(logs)
    logs.add_argument(
        "-n", "--lines", type=int, default=20, help="how many last lines (default: %(default)s)"
    )
    logs.add_argument(
        "-f", "--follow", action="store_true", help="then print new lines as they come (Ctrl-C)"
    )
    logs.add_argument("--hub", action="store_true", help=f"the hub's log ({LOG_FILE}) instead")
    logs.set_defaults(run=_logs)

    engine = commands.add_parser("engine", help="one engine of a running cluster")
    engine_actions = engine.add_subparsers(dest="action", metavar="ACTION", required=True)
    connect = engine_actions.add_parser(
        "connect-info",
        help="write a Jupyter connection file for an engine and print its path",
        description=(
            "Open a Jupyter gateway on a running engine (a kernel's five sockets, with a"
            " key of its own) and write its Jupyter connection file (mode 0600), so that"
            " `jupyter console --existing FILE` or jupyter_client attach to the engine"
            " while the cluster goes on using it. Shutting the console down (without"
            " restart) detaches it; the engine runs on."
        ),
    )
    connect.add_argument("id", type=int, metavar="ID", help="the engine's id")
    _add_profile(connect)
    connect.add_argument(
        "--file",
        default=None,
        help="where to write it (default: kernel-engine-ID.json in the cluster's folder)",
    )
    connect.add_argument(
        "--ip",
        default="127.0.0.1",
        help="the address the gateway binds: loopback (default), an address, or 'outbound'"
        " (the engine's interface towards the hub, for a console on another host)",
    )
    connect.add_argument(
        "--insecure",
        action="store_true",
        help="allow an address other hosts reach: Jupyter's wire is signed, not encrypted",
    )
    connect.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    connect.set_defaults(run=_connect_info)
    interrupt = engine_actions.add_parser(
        "interrupt",
        help="interrupt what an engine runs (an attached console's cell, or a task)",
        description=(
            "Raise KeyboardInterrupt in whatever the engine runs now: a cell of an attached"
            " Jupyter console (`jupyter console --existing` cannot interrupt a kernel it"
            " did not start) or a cluster task, as client[ID].interrupt() does."
        ),
    )
    interrupt.add_argument("id", type=int, metavar="ID", help="the engine's id")
    _add_profile(interrupt)
    interrupt.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    interrupt.set_defaults(run=_interrupt)

    commands.add_parser(
        "hub", help="run the hub process itself (see `shoal hub --help`)", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shoal`` command line; returns its exit status (0, 1 or 2).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments, without the program name; default: ``sys.argv[1:]``.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["hub"]:
        from .._server.main import main as hub_main  # noqa: PLC0415 - only this command needs it

        try:
            return hub_main(args_list[1:])
        except SystemExit as exc:  # argparse: usage errors and --help
            return _exit_code(exc)
    parser = _parser()
    try:
        # `cluster start` passes what it does not know on to the hub, which checks it.
        args, rest = parser.parse_known_args(args_list)
        if rest and getattr(args, "run", None) is not _cluster_start:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.hub_args = rest
    except SystemExit as exc:
        return _exit_code(exc)
    for option in ("n", "lines"):
        if getattr(args, option, None) is not None and getattr(args, option) < 0:
            parser.print_usage(sys.stderr)
            print(
                f"shoal: error: -n must be at least 0, got {getattr(args, option)}", file=sys.stderr
            )
            return 2
    try:
        return int(args.run(args))
    except CommandError as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("shoal: interrupted", file=sys.stderr)
        return 1


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 2


if __name__ == "__main__":
    sys.exit(main())
