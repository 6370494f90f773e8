"""``python -m shoal.hub``: run a hub process (the ``shoal hub`` command)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import zmq

from shoal.util import integer_loglevel, local_logger
from shoal.wire import InsecureBindError

from .._profile import ENGINES_LOG, profile_dir
from .hub import Hub
from .launchers import LAUNCHERS, MakeLauncher

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shoal.hub [-n ENGINES] [--profile NAME | --profile-dir DIR]``."""
    parser = argparse.ArgumentParser(
        prog="shoal-hub",
        description="run a shoal hub: engines register with it, clients reach them through it",
    )
    parser.add_argument(
        "-n", type=int, default=None, help="engines to start (ssh: the --hosts' counts)"
    )
    launch = parser.add_argument_group("engines", "where the hub starts its engines")
    launch.add_argument(
        "--engines",
        default="local",
        metavar="{" + ",".join(LAUNCHERS) + "}",
        help="the launcher (default: local processes)",
    )
    for launcher in LAUNCHERS.values():
        launcher.add_arguments(launch)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--profile-dir", default=None, help="overrides --profile")
    parser.add_argument("--ip", default="127.0.0.1", help="interface to bind (loopback)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --ip without encryption (a trusted network only)",
    )
    parser.add_argument(
        "--curve",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="encrypt and authenticate with CurveZMQ (default: on for any --ip but loopback)",
    )
    parser.add_argument(
        "--location",
        default=None,
        help="the address peers dial when --ip is a wildcard (default: this host's name)",
    )
    parser.add_argument("--hwm", type=int, default=2, help="tasks queued per engine")
    parser.add_argument("--period", type=float, default=0.2, help="heartbeat period, s")
    parser.add_argument("--timeout", type=float, default=2.0, help="silent engine is dead, s")
    parser.add_argument(
        "--client-timeout", type=float, default=10.0, help="silent client's objects are freed, s"
    )
    parser.add_argument(
        "--allowed-failures",
        type=int,
        default=3,
        help="a task that was running on this many engines when each died fails for good",
    )
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument(
        "--log-level", type=_log_level, default="WARNING", help="of the hub's own log (stderr)"
    )
    parser.add_argument(
        "--engine-log-level",
        type=_log_level,
        default="WARNING",
        help=f"of the engines' logs (stderr, and {ENGINES_LOG} in the profile folder)",
    )
    parser.add_argument(
        "--store", choices=["sqlite"], default=None, help="keep task history on disk"
    )
    args = parser.parse_args(argv)
    if args.engines.isdigit():  # the old spelling: `--engines 4` for `-n 4`
        args.n, args.engines = int(args.engines), "local"
    try:
        make_launcher, n = _launcher(args)
    except ValueError as exc:
        parser.error(str(exc))
    local_logger("", args.log_level)  # timestamped lines on stderr (the launcher's hub.log)
    folder = args.profile_dir or profile_dir(args.profile)
    try:
        hub = Hub(
            folder,
            ip="127.0.0.1" if args.ip == "localhost" else args.ip,
            hwm=args.hwm,
            period=args.period,
            timeout=args.timeout,
            parent_pid=args.parent_pid,
            engine_log_level=args.engine_log_level,
            store=args.store,
            client_timeout=args.client_timeout,
            insecure=args.insecure,
            allowed_failures=args.allowed_failures,
            curve=args.curve,
            location=args.location,
            launcher=make_launcher,
        )
    except InsecureBindError as exc:  # the same rule as Hub(ip=...): one place decides
        parser.error(f"--ip {args.ip}: {exc}; pass --insecure to allow it on a trusted network")
    except zmq.ZMQError as exc:  # e.g. an address of no interface of this host
        parser.error(f"--ip {args.ip}: cannot bind there: {exc}")
    except ValueError as exc:  # a malformed --ip, or --hwm, --allowed-failures, ...
        parser.error(str(exc))
    try:
        hub.launch(n)
    except (OSError, RuntimeError) as exc:  # ssh could not reach a host, ...
        print(f"shoal hub: cannot start the engines: {exc}", file=sys.stderr)
        hub.close()
        return 1
    print(f"shoal hub ready: {hub.client_file}", flush=True)  # launchers wait for this line
    return hub.serve()


def _launcher(args: argparse.Namespace) -> tuple[MakeLauncher, int]:
    """The launcher ``--engines`` names, with its options, and how many engines to start."""
    launcher = LAUNCHERS.get(args.engines)
    if launcher is None:
        raise ValueError(f"--engines {args.engines!r}: the launchers are {', '.join(LAUNCHERS)}")
    return launcher.from_arguments(args)


def _log_level(text: str) -> int:
    """``--log-level`` as a number: a level name in any case, or an integer."""
    try:
        return integer_loglevel(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
