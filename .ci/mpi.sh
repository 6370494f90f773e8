#!/usr/bin/env bash
# MPI for shoal's MPI launcher tests, with a self-check. Meant for CI (root on a fresh
# Debian 12, 2 cores) and for developers by hand. Idempotent; about 2 s when done already.
#
#   .ci/mpi.sh [mpich]   the default, and what CI uses. Nothing system-wide: hatch.toml
#                        puts mpi4py (binary wheel) and the `mpich` wheel (libmpi, mpiexec,
#                        mpicc) into the hatch-test env, which this syncs through hatch.
#                        MPICH's mpiexec needs no flag as root, oversubscribes freely and
#                        needs no network (it even runs with loopback down).
#   .ci/mpi.sh openmpi   Debian's Open MPI from apt (openmpi-bin libopenmpi-dev, ~12 s)
#                        for testing against a second MPI. Its mpiexec needs, as root on
#                        2 cores, the variables in $ompi_env below (printed at the end).
#
# Either way the self-check runs `mpiexec -n 4` twice, on 2 cores and as root: plain python3
# (each rank reads its rank from the environment: PMI_RANK under MPICH,
# OMPI_COMM_WORLD_RANK/PMIX_RANK under Open MPI), then the hatch-test env's python with
# mpi4py (4 ranks, allreduce of the ranks = 6).
#
# Pair mpiexec and libmpi: the hatch-test env's mpi4py loads the mpich wheel's libmpi
# first, and any other mpiexec (apt's Open MPI) then starts 4 singletons of size 1, or
# MPICH aborts with "unsupported PMI version PMIx". Run the env's own bin/mpiexec, or with
# Open MPI's mpiexec set MPI4PY_LIBMPI=libmpi.so.40 (as the openmpi check does).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-mpich}
ompi_env=(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none)
t0=$(date +%s.%N)

elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '[mpi.sh +%ss] %s\n' "$(elapsed)" "$*"; }
die() { printf '[mpi.sh] ERROR: %s\n' "$*" >&2; exit 1; }

# The hatch-test env that `hatch test` picks: the one of the interpreter that runs hatch.
test_env_python() {
  command -v hatch >/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check "hatch>=1.18" >&2
  local ver
  ver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  # `hatch run` creates the env if needed and installs what hatch.toml added since.
  hatch run "hatch-test.py$ver:python" -c 'import sys; print(sys.executable)' | tail -n 1
}

# check_ranks MPIEXEC [ENV...]: plain python3, no mpi4py; every rank writes its rank
# (from the environment) to a file, so that interleaved output cannot fool the check.
check_ranks() {
  local mpiexec=$1 dir got
  shift
  dir=$(mktemp -d)
  env "$@" "$mpiexec" -n 4 python3 -c '
import os, sys
keys = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
found = {k: os.environ[k] for k in keys if k in os.environ}
rank = next(iter(found.values()))
with open(os.path.join(sys.argv[1], "rank." + rank), "w") as f:
    f.write(f"rank {rank} pid {os.getpid()} {found}\n")
' "$dir" || { rm -rf "$dir"; die "mpiexec -n 4 python3 failed"; }
  got=$(cat "$dir"/rank.* 2>/dev/null | sort)
  rm -rf "$dir"
  printf '%s\n' "$got" | sed 's/^/    /'
  [ "$(printf '%s\n' "$got" | awk '{ print $2 }' | sort -u | tr '\n' ' ')" = "0 1 2 3 " ] ||
    die "expected ranks 0 1 2 3 from mpiexec -n 4 python3"
}

# check_mpi4py MPIEXEC PYTHON [ENV...]: rank 0 gathers what every rank says.
check_mpi4py() {
  local mpiexec=$1 py=$2 out
  shift 2
  out=$(env "$@" "$mpiexec" -n 4 "$py" -c '
import mpi4py
from mpi4py import MPI
c = MPI.COMM_WORLD
rows = c.gather((c.rank, c.size, c.allreduce(c.rank)), root=0)
if c.rank == 0:
    lib = " ".join(MPI.Get_library_version().replace("\0", "").splitlines()[0].split())
    print(f"mpi4py {mpi4py.__version__} on {lib}: (rank, size, allreduce)", rows)
') || die "mpiexec -n 4 python + mpi4py failed"
  echo "    $out"
  case $out in
    *"[(0, 4, 6), (1, 4, 6), (2, 4, 6), (3, 4, 6)]"*) ;;
    *) die "expected 4 ranks of a size-4 world, allreduce 6" ;;
  esac
}

case $mode in
  mpich)
    say "syncing the hatch-test env (mpi4py, mpich from hatch.toml)"
    py=$(test_env_python)
    bin=$(dirname "$py")
    [ -x "$bin/mpiexec" ] || die "no mpiexec in $bin: is \"mpich\" in hatch.toml's hatch-test env?"
    say "env python: $py"
    say "mpiexec: $bin/mpiexec ($("$bin/mpichversion" 2>/dev/null | sed -n 's/^MPICH Version:[[:space:]]*/MPICH /p'))"
    say "self-check: mpiexec -n 4 python3, on $(nproc) cores as $(id -un)"
    check_ranks "$bin/mpiexec"
    say "self-check: mpiexec -n 4 <hatch-test python> with mpi4py"
    check_mpi4py "$bin/mpiexec" "$py"
    ;;
  openmpi)
    [ "$(id -u)" -eq 0 ] || die "run me as root (apt-get)"
    pkgs=(openmpi-bin libopenmpi-dev)
    if [ "$(dpkg-query -W -f '${Status}\n' "${pkgs[@]}" 2>/dev/null | grep -c 'ok installed')" -eq 2 ]; then
      say "${pkgs[*]} already installed"
    else
      say "installing ${pkgs[*]}"
      export DEBIAN_FRONTEND=noninteractive
      # A fresh machine may have empty package lists: update only when the install fails.
      apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null || {
        apt-get update -q >/dev/null &&
          apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
      } || die "apt-get install ${pkgs[*]} failed"
      say "installed"
    fi
    say "mpiexec: $(command -v mpiexec) ($(mpiexec --version | head -n 1)), mpicc: $(command -v mpicc)"
    say "self-check: mpiexec -n 4 python3, on $(nproc) cores as $(id -un), with ${ompi_env[*]}"
    check_ranks /usr/bin/mpiexec "${ompi_env[@]}"
    say "syncing the hatch-test env (mpi4py from hatch.toml)"
    py=$(test_env_python)
    say "self-check: mpiexec -n 4 <hatch-test python> with mpi4py (MPI4PY_LIBMPI=libmpi.so.40)"
    check_mpi4py /usr/bin/mpiexec "$py" "${ompi_env[@]}" MPI4PY_LIBMPI=libmpi.so.40
    say "Open MPI's mpiexec as root on few cores needs: export ${ompi_env[*]}"
    ;;
  *)
    echo "usage: $0 [mpich|openmpi]" >&2
    exit 2
    ;;
esac
say "MPI ok ($mode); total $(elapsed) s"
