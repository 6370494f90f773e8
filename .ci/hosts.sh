#!/usr/bin/env bash
# Simulated hosts for shoal's multi-host tests: network namespaces on one Linux bridge,
# two of them running an sshd that looks like a separate machine (own hostname, own
# /dev/shm). Meant for CI (root on a fresh Debian 12, no systemd needed) and for
# developers by hand.
#
#   .ci/hosts.sh up      install what is missing, build bridge + namespaces, start the
#                        sshds, write $state (keys, ssh_config, hosts.json), self-check.
#                        Idempotent: a second `up` keeps what is healthy.
#   .ci/hosts.sh check   run the self-checks against what `up` built.
#   .ci/hosts.sh down    stop the sshds this script started (by their recorded PIDs),
#                        delete namespaces, veths and bridge, remove $state.
#
# Layout (10.77.0.0/24 on bridge shoalbr0, root namespace at 10.77.0.254):
#   hub    netns shoal-hub  10.77.0.1  host-side veth vsh-hub
#   nodea  netns shoal-a    10.77.0.2  host-side veth vsh-a    sshd, hostname nodea
#   nodeb  netns shoal-b    10.77.0.3  host-side veth vsh-b    sshd, hostname nodeb
# Inside each namespace the veth end is called eth0.
#
#   ssh -F /run/shoal-hosts/ssh_config nodea hostname        # -> nodea
#   ip netns exec shoal-hub python3 -m ...                   # a process "on" the hub
set -euo pipefail

state=/run/shoal-hosts
bridge=shoalbr0
root_ip=10.77.0.254
prefix=24
port_probe=47999 # self-check TCP echo servers, one per namespace
lock=/run/lock/shoal-hosts.lock

names=(hub nodea nodeb)
declare -A netns=([hub]=shoal-hub [nodea]=shoal-a [nodeb]=shoal-b)
declare -A ip=([hub]=10.77.0.1 [nodea]=10.77.0.2 [nodeb]=10.77.0.3)
declare -A veth=([hub]=vsh-hub [nodea]=vsh-a [nodeb]=vsh-b)
# Fixed MACs (02: = locally administered; last byte = the IP's): a namespace remade by a
# later `up` keeps its MAC, so neighbours' ARP caches stay right and pcaps read easily.
declare -A mac=([hub]=02:77:00:00:00:01 [nodea]=02:77:00:00:00:02 [nodeb]=02:77:00:00:00:03)
bridge_mac=02:77:00:00:00:fe
ssh_nodes=(nodea nodeb) # these run an sshd; the name is also their hostname

t0=$(date +%s.%N)
say() { printf '[hosts.sh] %s\n' "$*"; }
die() { printf '[hosts.sh] ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# Background helpers of the self-check (PIDs we started); ended on any exit.
helpers=()
cleanup_helpers() {
  local pid
  for pid in "${helpers[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${helpers[@]}"; do wait "$pid" 2>/dev/null || true; done
  helpers=()
}
on_exit() {
  local rc=$?
  cleanup_helpers
  # A failed `up` must not leave an older hosts.json advertising a broken setup.
  if [ "$rc" -ne 0 ] && [ "${cmd:-}" = up ]; then rm -f "$state/hosts.json"; fi
}
trap on_exit EXIT
# forget PID: a helper already ended and reaped; don't signal its (maybe recycled) PID.
forget() {
  local p rest=()
  for p in "${helpers[@]}"; do [ "$p" = "$1" ] || rest+=("$p"); done
  helpers=("${rest[@]}")
}

# gone PID: the process has ended (a zombie counts: our init may be slow to reap).
gone() { [ ! -e "/proc/$1" ] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# put MODE FILE: write stdin to FILE atomically. Others may be using a running setup while
# `up` runs again: an ssh must never read a half-written ssh_config or known_hosts.
put() {
  cat >"$2.tmp"
  chmod "$1" "$2.tmp"
  mv -f "$2.tmp" "$2"
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.05 s until it succeeds.
wait_for() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$(awk -v a="$(date +%s.%N)" -v l="$limit" 'BEGIN { printf "%.3f", a + l }')
  until "$@" >/dev/null 2>&1; do
    if awk -v d="$deadline" -v n="$(date +%s.%N)" 'BEGIN { exit !(n > d) }'; then
      say "timed out after ${limit}s waiting for: $what"
      return 1
    fi
    sleep 0.05
  done
}

# tcp_open IP PORT: something accepts TCP connections there (bash's /dev/tcp, 1 s cap).
tcp_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# ------------------------------------------------------------------------- packages

install_packages() {
  local pkg missing=()
  for pkg in iproute2 openssh-server openssh-client tcpdump util-linux; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing: ${missing[*]}"
  # Only the binaries are wanted: keep the package scripts from starting a system sshd
  # on 0.0.0.0:22 (policy-rc.d 101 = "action not allowed"; deb-systemd-invoke obeys it
  # too). Docker images already ship one; we only add ours if there is none, and remove it.
  local policy=/usr/sbin/policy-rc.d ours=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=1
  fi
  local rc=0
  {
    export DEBIAN_FRONTEND=noninteractive
    # Wait for dpkg's lock instead of failing when another apt-get runs (CI setup steps).
    apt-get update -qq -o DPkg::Lock::Timeout=300 &&
      apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null
  } || rc=$?
  [ -z "$ours" ] || rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get failed (exit $rc)"
}

# -------------------------------------------------------------------------- network

bridge_nf_off() {
  # With br_netfilter loaded, bridged frames go through iptables' FORWARD chain (Docker
  # sets its policy to DROP). Turn that off for the test net; `down` restores the value.
  local key f
  for key in iptables ip6tables arptables; do
    f=/proc/sys/net/bridge/bridge-nf-call-$key
    [ -e "$f" ] || continue
    [ -e "$state/sysctl.$key" ] || cat "$f" >"$state/sysctl.$key"
    [ "$(cat "$f")" = 0 ] || echo 0 >"$f" 2>/dev/null || say "could not set $f to 0"
  done
}

# ns_ok NETNS: the namespace exists and is usable (a stale file in /run/netns is not).
ns_ok() { ip -n "$1" link show lo >/dev/null 2>&1; }

setup_network() {
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" address "$bridge_mac" type bridge
  fi
  ip addr replace "$root_ip/$prefix" dev "$bridge"
  ip link set "$bridge" up
  bridge_nf_off

  local n ns v
  for n in "${names[@]}"; do
    ns=${netns[$n]} v=${veth[$n]}
    if ! ns_ok "$ns"; then
      ip netns del "$ns" 2>/dev/null || true
      ip netns add "$ns"
    fi
    # Both ends must exist; otherwise (half-made, or peer in a dead namespace) redo the pair.
    if ! { ip link show "$v" >/dev/null 2>&1 && ip -n "$ns" link show eth0 >/dev/null 2>&1; }; then
      ip link del "$v" 2>/dev/null || true
      ip link add "$v" type veth peer name eth0 address "${mac[$n]}" netns "$ns"
    fi
    ip link set "$v" master "$bridge" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr replace "${ip[$n]}/$prefix" dev eth0
    ip -n "$ns" link set eth0 up
  done
}

# ------------------------------------------------------------------- keys and config

write_state() {
  install -d -m 0700 "$state"
  local n
  for n in "${ssh_nodes[@]}"; do install -d -m 0700 "$state/$n"; done

  # Keys are made once and kept, so known_hosts stays valid across repeated `up`s.
  [ -e "$state/id_ed25519" ] ||
    ssh-keygen -q -t ed25519 -N '' -C shoal-hosts-client -f "$state/id_ed25519"
  chmod 600 "$state/id_ed25519"
  put 600 "$state/authorized_keys" <"$state/id_ed25519.pub"

  # /etc/hosts as seen inside nodea/nodeb (bind-mounted there): each node resolves its own
  # name and the others', like on a real cluster, instead of asking an unreachable DNS.
  {
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n'
    for n in "${names[@]}"; do printf '%s\t%s\n' "${ip[$n]}" "$n"; done
  } | put 644 "$state/etc-hosts"

  local use_pam=no
  # Without PAM, sshd refuses any login (even by key) to an account whose password field
  # starts with "!" (locked). Fall back to PAM then; its account check allows keys.
  if getent shadow root | cut -d: -f2 | grep -q '^!'; then use_pam=yes; fi

  for n in "${ssh_nodes[@]}"; do
    [ -e "$state/$n/ssh_host_ed25519_key" ] ||
      ssh-keygen -q -t ed25519 -N '' -C "$n" -f "$state/$n/ssh_host_ed25519_key"
  done
  for n in "${ssh_nodes[@]}"; do
    printf '%s,%s %s\n' "$n" "${ip[$n]}" "$(cut -d' ' -f1,2 "$state/$n/ssh_host_ed25519_key.pub")"
  done | put 644 "$state/known_hosts"

  for n in "${ssh_nodes[@]}"; do
    put 644 "$state/$n/sshd_config" <<EOF
# sshd of simulated host $n (written by .ci/hosts.sh)
ListenAddress ${ip[$n]}:22
HostKey $state/$n/ssh_host_ed25519_key
PidFile $state/$n/sshd.pid
AuthorizedKeysFile $state/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM $use_pam
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
# scp uses the SFTP protocol since OpenSSH 9.0
Subsystem sftp internal-sftp
# tests may start many engines at once: don't drop concurrent unauthenticated connections
MaxStartups 200
MaxSessions 100
LogLevel INFO
EOF
  done

  put 644 "$state/ssh_config" <<EOF
# ssh -F $state/ssh_config nodea ...   (written by .ci/hosts.sh)
Host nodea
  HostName ${ip[nodea]}
Host nodeb
  HostName ${ip[nodeb]}
Host nodea nodeb ${ip[nodea]} ${ip[nodeb]}
  User root
  IdentityFile $state/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $state/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
  LogLevel ERROR
  ControlMaster no
  ControlPath none
EOF

  # The self-check's TCP echo server / prober (python3 sockets).
  put 644 "$state/selfcheck.py" <<'EOF'
"""TCP helpers for .ci/hosts.sh's self-check: `serve IP PORT`, `probe NAME IP:PORT...`."""
import socket
import sys


def serve(ip: str, port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port))
    srv.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(2)
            try:
                conn.sendall(b"echo " + conn.recv(256))
            except OSError:
                pass


def probe(name: str, targets: list[str]) -> int:
    failed = 0
    for target in targets:
        ip, port = target.rsplit(":", 1)
        msg = f"shoal-marker {name}->{ip}".encode()
        try:
            with socket.create_connection((ip, int(port)), timeout=2) as conn:
                conn.sendall(msg)
                conn.settimeout(2)
                reply = conn.recv(256)
            if reply != b"echo " + msg:
                raise OSError(f"bad reply {reply!r}")
        except OSError as exc:
            print(f"{name} -> {target}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(probe(sys.argv[2], sys.argv[3:]))
EOF
}

write_hosts_json() {
  put 644 "$state/hosts.json" <<EOF
{
  "bridge": "$bridge",
  "root_ip": "$root_ip",
  "prefix": $prefix,
  "ssh_config": "$state/ssh_config",
  "hosts": {
    "hub": {"netns": "${netns[hub]}", "ip": "${ip[hub]}", "veth": "${veth[hub]}"},
    "nodea": {"netns": "${netns[nodea]}", "ip": "${ip[nodea]}", "veth": "${veth[nodea]}", "ssh": "nodea", "hostname": "nodea"},
    "nodeb": {"netns": "${netns[nodeb]}", "ip": "${ip[nodeb]}", "veth": "${veth[nodeb]}", "ssh": "nodeb", "hostname": "nodeb"}
  }
}
EOF
}

# ---------------------------------------------------------------------------- sshds

# sshd_alive NODE: the sshd whose PID we recorded still runs with our config (not a
# recycled PID).
sshd_alive() {
  local pid
  pid=$(cat "$state/$1/launch.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-f $state/$1/sshd_config"
}

# sshd_in_netns NODE: our sshd runs in the namespace that now has NODE's netns name (not in
# an old one that someone deleted by name while the sshd kept it alive).
sshd_in_netns() {
  local pid
  pid=$(cat "$state/$1/launch.pid")
  [ "$(readlink "/proc/$pid/ns/net")" = "net:[$(stat -L -c %i "/run/netns/${netns[$1]}")]" ]
}

start_sshd() {
  local n=$1
  if sshd_alive "$n"; then
    if sshd_in_netns "$n"; then return 0; fi
    stop_sshd "$n"
  fi
  install -d -m 0755 /run/sshd # privilege separation dir; /run is shared with the namespaces
  /usr/sbin/sshd -t -f "$state/$n/sshd_config" || die "bad sshd config for $n"
  # ip netns exec -> unshare -> sh -> sshd all exec in place, so $! is sshd's PID.
  # New UTS namespace: own hostname. New mount namespace (private, so nothing leaks back
  # to the root one): a fresh tmpfs on /dev/shm, and our hosts file on /etc/hosts.
  # setsid: not in the caller's process group, so a Ctrl-C there does not reach it.
  # shellcheck disable=SC2016,SC2094 # $1.. expand in that sh; sshd -E and >> both append
  setsid ip netns exec "${netns[$n]}" \
    unshare --uts --mount --propagation private -- \
    sh -c 'set -e
      echo "$1" >/proc/sys/kernel/hostname
      mount -t tmpfs -o size=2g,mode=1777 shoal-shm /dev/shm
      mount --bind "$2" /etc/hosts
      exec /usr/sbin/sshd -D -f "$3" -E "$4"' \
    sh "$n" "$state/etc-hosts" "$state/$n/sshd_config" "$state/$n/sshd.log" \
    </dev/null >>"$state/$n/sshd.log" 2>&1 9>&- &
  echo $! >"$state/$n/launch.pid"
  if ! wait_for 10 "sshd of $n on ${ip[$n]}:22" tcp_open "${ip[$n]}" 22; then
    tail -n 20 "$state/$n/sshd.log" >&2 || true
    die "sshd of $n did not start"
  fi
  sshd_alive "$n" || die "sshd of $n: recorded PID $(cat "$state/$n/launch.pid") is not it"
}

# ------------------------------------------------------------------------ self-check

# in_ns NAME: sets $ns_cmd to the prefix that runs a command in host NAME's network
# namespace ("root" = this one). A prefix, not a function: `"${ns_cmd[@]}" cmd &` then
# gives the PID of cmd itself (ip netns exec execs it), which a function would not.
in_ns() {
  if [ "$1" = root ]; then ns_cmd=(); else ns_cmd=(ip netns exec "${netns[$1]}"); fi
}

check_network() {
  local py=$1 n m out targets ns_cmd pcap=$state/selfcheck.pcap
  declare -A addr=([root]=$root_ip)
  for n in "${names[@]}"; do addr[$n]=${ip[$n]}; done
  local all=(root "${names[@]}")

  # tcpdump on the bridge (promiscuous, so it also sees frames bridged between two
  # namespaces). -Z root: it would otherwise drop to user tcpdump before opening the file.
  # --immediate-mode: else packets wait in the kernel ring buffer and SIGINT loses them.
  # The name ends in .pcap: Debian's AppArmor profile lets tcpdump write only such files.
  rm -f "$pcap"
  tcpdump -i "$bridge" --immediate-mode -U -n -Z root -w "$pcap" "tcp port $port_probe" 2>"$state/tcpdump.err" 9>&- &
  helpers+=($!)
  local tcpdump_pid=$!

  # A TCP echo server in every namespace, on its own address (hub: the address tests bind).
  for n in "${all[@]}"; do
    out=$state/serve.$n
    : >"$out"
    in_ns "$n"
    "${ns_cmd[@]}" "$py" "$state/selfcheck.py" serve "${addr[$n]}" "$port_probe" >"$out" 2>&1 9>&- &
    helpers+=($!)
  done
  for n in "${all[@]}"; do
    wait_for 5 "echo server in $n" grep -q ready "$state/serve.$n" || {
      cat "$state/serve.$n" >&2
      die "echo server in $n did not start"
    }
  done
  wait_for 5 "tcpdump on $bridge" grep -q 'listening on' "$state/tcpdump.err" || {
    cat "$state/tcpdump.err" >&2
    die "tcpdump did not start"
  }

  # Every namespace reaches every other address (one python process per source).
  local fail=0
  for n in "${all[@]}"; do
    targets=()
    for m in "${all[@]}"; do [ "$m" = "$n" ] || targets+=("${addr[$m]}:$port_probe"); done
    in_ns "$n"
    "${ns_cmd[@]}" "$py" "$state/selfcheck.py" probe "$n" "${targets[@]}" || fail=1
  done
  [ "$fail" -eq 0 ] || die "some namespaces cannot reach each other (see above)"
  say "ok: root, hub, nodea, nodeb all reach each other over TCP"

  # The nodea -> hub exchange crossed the bridge between two namespaces: it must be in
  # the capture. SIGINT makes tcpdump flush and exit.
  kill -INT "$tcpdump_pid"
  wait "$tcpdump_pid" 2>/dev/null || true
  forget "$tcpdump_pid"
  grep -aq "shoal-marker nodea->${ip[hub]}" "$pcap" ||
    die "tcpdump -i $bridge did not capture the nodea -> hub exchange"
  say "ok: tcpdump -i $bridge captures traffic between namespaces"
  cleanup_helpers
  rm -f "$pcap" "$state"/serve.* "$state/tcpdump.err"
}

check_ssh() {
  local py=$1 n out probe f lines
  local ssh=(ssh -F "$state/ssh_config")
  # /dev/shm's device number identifies the tmpfs instance behind it.
  local -A shm_dev=([root]=$(stat -c %d /dev/shm))
  probe=shoal-hosts-probe.$$
  touch "/dev/shm/$probe"
  for n in "${ssh_nodes[@]}"; do
    # One session per node, as each costs a few tenths of a second: `hostname`; python's
    # socket.gethostname() from the same interpreter by absolute path (shared filesystem);
    # plain python3 from the login PATH, if there is one (CI may keep python elsewhere);
    # the device behind /dev/shm; then its listing.
    out=$("${ssh[@]}" "$n" "hostname
      $py -c 'import socket; print(socket.gethostname())'
      if command -v python3 >/dev/null; then python3 -c 'import socket; print(socket.gethostname())'; else echo no-python3; fi
      stat -c %d /dev/shm
      ls -A /dev/shm") || die "ssh $n failed"
    mapfile -t lines <<<"$out"
    [ "${lines[0]}" = "$n" ] || die "ssh $n hostname printed '${lines[0]}'"
    [ "${lines[1]}" = "$n" ] || die "ssh $n $py: gethostname() is '${lines[1]}'"
    case ${lines[2]} in
      "$n") ;;
      no-python3) say "note: no python3 on $n's login PATH; use an absolute path" ;;
      *) die "ssh $n python3: gethostname() is '${lines[2]}'" ;;
    esac
    shm_dev[$n]=${lines[3]}
    if printf '%s\n' "${lines[@]:4}" | grep -qxF "$probe"; then
      die "$n sees the root namespace's /dev/shm"
    fi
  done
  rm -f "/dev/shm/$probe"
  if [ "${shm_dev[nodea]}" = "${shm_dev[root]}" ] || [ "${shm_dev[nodeb]}" = "${shm_dev[root]}" ] ||
    [ "${shm_dev[nodea]}" = "${shm_dev[nodeb]}" ]; then
    die "/dev/shm is shared (devices: root ${shm_dev[root]}, nodea ${shm_dev[nodea]}, nodeb ${shm_dev[nodeb]})"
  fi
  say "ok: ssh nodea/nodeb: own hostname (also for python3), own /dev/shm"

  # scp (SFTP) works; /tmp is the shared filesystem, so the file lands in our /tmp.
  f=$(mktemp /tmp/shoal-hosts-scp.XXXXXX)
  echo "$probe" >"$f"
  scp -q -F "$state/ssh_config" "$f" "nodea:$f.copy" || die "scp to nodea failed"
  grep -qxF "$probe" "$f.copy" || die "scp to nodea: the copy is wrong"
  rm -f "$f" "$f.copy"
  say "ok: scp -F $state/ssh_config FILE nodea:/tmp/"
}

self_check() {
  command -v python3 >/dev/null || die "the self-check needs python3 on PATH"
  # The real interpreter (not e.g. a pyenv shim), which the nodes reach by the same path.
  local py
  py=$(python3 -c 'import sys; print(sys.executable)')
  check_network "$py"
  check_ssh "$py"
}

# ------------------------------------------------------------------------------ down

stop_sshd() {
  local n=$1 pid
  pid=$(cat "$state/$n/launch.pid" 2>/dev/null) || return 0
  if sshd_alive "$n"; then
    kill "$pid"
    wait_for 5 "sshd of $n to exit" gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
    say "stopped sshd of $n (PID $pid)"
  fi
  rm -f "$state/$n/launch.pid"
}

down() {
  local n ns v key pids
  for n in "${ssh_nodes[@]}"; do stop_sshd "$n"; done
  for n in "${names[@]}"; do
    ns=${netns[$n]} v=${veth[$n]}
    if [ -e "/run/netns/$ns" ]; then
      # Not ours to end (sessions or engines started through ssh): only report them.
      pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ') || true
      [ -z "$pids" ] || say "warning: processes still in $ns (left running): $pids"
      ip netns del "$ns"
    fi
    # The pair goes away with an empty namespace, but not while something still runs there.
    ip link del "$v" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
  for key in iptables ip6tables arptables; do
    if [ -e "$state/sysctl.$key" ] && [ -e "/proc/sys/net/bridge/bridge-nf-call-$key" ]; then
      cat "$state/sysctl.$key" >"/proc/sys/net/bridge/bridge-nf-call-$key" 2>/dev/null || true
    fi
  done
  rm -rf "$state"
  say "down in $(elapsed)s"
}

# -------------------------------------------------------------------------------- up

up() {
  install_packages
  install -d -m 0700 "$state"
  setup_network
  write_state
  local n
  for n in "${ssh_nodes[@]}"; do start_sshd "$n"; done
  self_check
  # Last: tests take hosts.json as "up and checked" (on_exit removes it when `up` fails).
  write_hosts_json
  say "up in $(elapsed)s: bridge $bridge $root_ip/$prefix;" \
    "hub ${ip[hub]} (ip netns exec ${netns[hub]} ...);" \
    "nodea ${ip[nodea]}, nodeb ${ip[nodeb]} (ssh -F $state/ssh_config nodea ...);" \
    "described in $state/hosts.json"
}

# ------------------------------------------------------------------------------ main

[ "$(id -u)" -eq 0 ] || die "run me as root"
cmd=${1:-}
case $cmd in
  up | down | check) ;;
  *) die "usage: $0 up|down|check" ;;
esac

# One run at a time (two `up`s racing would both try to create the same links). What runs
# on in the background (sshd, self-check helpers) gets 9>&-, so it never holds the lock.
install -d /run/lock
exec 9>"$lock"
flock -w 60 9 || die "another $0 is still running"

case $cmd in
  up) up ;;
  down) down ;;
  check)
    [ -e "$state/hosts.json" ] || die "not up: no $state/hosts.json"
    self_check
    say "check passed in $(elapsed)s"
    ;;
esac
