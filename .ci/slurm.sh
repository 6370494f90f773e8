#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests that submit real batch jobs
# (sbatch, squeue, scancel). Meant for CI: runs as root on a fresh Debian 12 with no
# systemd as init, so every daemon is started directly, never with systemctl.
#
#   .ci/slurm.sh up      install slurm-wlm + munge if missing, write the config, start
#                        munged, slurmctld and slurmd, wait for the node to be idle and
#                        (on a fresh start) run self-checks. Idempotent: a second `up`
#                        with everything healthy returns in well under a second.
#   .ci/slurm.sh check   run the self-checks against the running cluster.
#   .ci/slurm.sh status  show the daemons this script started and what sinfo says.
#   .ci/slurm.sh down    cancel the cluster's jobs and stop only the daemons this script
#                        started, by the PIDs recorded in $state; packages stay installed.
#
# The node is named after `hostname -s` and reached at 127.0.0.1, so a hostname that
# does not resolve does no harm. It advertises $SHOAL_SLURM_CPUS CPUs (16 by default)
# whatever the machine has, so that several small jobs run at once on a 2-core runner.
# No cgroup plugin is used (proctrack/linuxproc, task/none): CI sandboxes rarely let
# slurmd create cgroups.
set -euo pipefail

state=/run/shoal-slurm            # PID files of the daemons started here
conf_dir=/etc/slurm
conf=$conf_dir/slurm.conf
log_dir=/var/log/slurm
cpus=${SHOAL_SLURM_CPUS:-16}
node=$(hostname -s)
t0=$(date +%s.%N)

say() { printf '[slurm.sh +%ss] %s\n' "$(elapsed)" "$*"; }
die() { printf '[slurm.sh] ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" -eq 0 ] || die "run me as root"

# ---------------------------------------------------------------------------- helpers

# alive NAME: the daemon whose PID this script recorded in $state/NAME.pid still runs
# (and is that daemon, not a recycled PID).
alive() {
  local pid
  pid=$(cat "$state/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s) + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      say "timed out after ${limit}s waiting for: $what"
      return 1
    fi
    sleep 0.2
  done
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() { sinfo -h -N -n "$node" -o '%T' 2>/dev/null | head -n 1; }

show_logs() {
  local f
  for f in "$log_dir/slurmctld.log" "$log_dir/slurmd.log" /var/log/munge/munged.log; do
    [ -f "$f" ] && { echo "---- tail $f"; tail -n 25 "$f"; }
  done
  return 0
}

# ---------------------------------------------------------------------------- install

# (sinfo --version needs a readable slurm.conf, so ask dpkg.)
pkg_versions() { dpkg-query -W -f '${Package} ${Version}  ' slurm-wlm munge 2>/dev/null; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
    command -v sbatch >/dev/null && command -v munged >/dev/null; then
    say "slurm-wlm and munge already installed: $(pkg_versions)"
    return
  fi
  say "installing slurm-wlm and munge"
  # Keep the packages' maintainer scripts from starting daemons (there is no init to
  # own them, and this script starts and records its own); the usual Docker trick.
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local pkgs=(slurm-wlm munge) rc=0
  # A fresh machine may have empty package lists: update only when the install fails.
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" || {
    apt-get update -q && apt-get install -y -q --no-install-recommends "${pkgs[@]}"
  } || rc=$?
  [ -n "$made_policy" ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get install failed"
  say "installed: $(pkg_versions)"
}

# ---------------------------------------------------------------------------- munge

start_munge() {
  # The key: Debian's postinst usually makes one; make it if it is missing.
  getent passwd munge >/dev/null || die "no munge user (the munge package makes it)"
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile=/etc/munge/munge.key --force
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  # /run is a tmpfs: the socket directory is gone after every boot.
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge

  if alive munged && munge_ok; then
    say "munged already running (pid $(cat "$state/munged.pid"))"
    return
  fi
  if munge_ok; then
    say "a munged not started by this script already answers; using it"
    return
  fi
  say "starting munged as user munge"
  rm -f /run/munge/munged.pid
  # munged daemonizes itself and writes its PID file; run it as munge like Debian does.
  runuser -u munge -- /usr/sbin/munged
  wait_for 20 "munged PID file" test -s /run/munge/munged.pid || { show_logs; die "munged did not start"; }
  cp /run/munge/munged.pid "$state/munged.pid"
  wait_for 20 "munge -n | unmunge" munge_ok || { show_logs; die "munge does not work"; }
  say "munged up (pid $(cat "$state/munged.pid")); munge -n | unmunge: $(munge -n | unmunge | sed -n 's/^STATUS: *//p')"
}

# ---------------------------------------------------------------------------- config

write_config() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp" <<EOF
# Written by shoal's .ci/slurm.sh: a one-node Slurm cluster for CI. Rewritten by every
# \`.ci/slurm.sh up\`; edit the script, not this file.
ClusterName=shoal-ci
# The node is this machine, named after \`hostname -s\` and always reached at 127.0.0.1,
# so an unresolvable hostname does not matter.
SlurmctldHost=$node(127.0.0.1)

# SlurmUser=root keeps CI simple (no slurm user, no ownership juggling of the state
# directories). Never do this on a real cluster.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
# Debian's default MailProg (/usr/bin/mail) is not installed; slurmctld logs an error.
MailProg=/bin/true
SwitchType=switch/none

# No cgroups anywhere: CI sandboxes and VMs often cannot give slurmd a cgroup tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none

# The node advertises $cpus CPUs whatever the hardware has (config_overrides makes slurmd
# accept the mismatch), so that several small jobs run at once; memory is not scheduled.
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Schedule a submitted batch job at the next tick (slurmctld's 1 s background loop)
# instead of up to 3 s later.
SchedulerParameters=batch_sched_delay=0

StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# Short timeouts so that everything is snappy.
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
# A job ended by scancel gets SIGTERM, then SIGKILL KillWait seconds later.
KillWait=2
# Finished jobs leave squeue at once; scontrol forgets them after MinJobAge seconds.
MinJobAge=5
Waittime=0
# A node that was DOWN comes back by itself once its slurmd registers.
ReturnToService=2

NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$node CPUs=$cpus RealMemory=1024 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  install -d -m 0755 "$conf_dir" "$log_dir" /var/spool/slurmctld /var/spool/slurmd
  if [ -f "$conf" ] && cmp -s "$tmp" "$conf"; then
    rm -f "$tmp"
    return 1 # unchanged
  fi
  install -m 0644 "$tmp" "$conf"
  rm -f "$tmp"
  say "wrote $conf (node $node, $cpus CPUs, partition debug)"
  return 0
}

# ---------------------------------------------------------------------------- daemons

# stop NAME: stop the daemon this script started (SIGTERM, SIGKILL after 15 s).
stop() {
  local name=$1 pid i
  if ! alive "$name"; then
    rm -f "$state/$name.pid"
    return 0
  fi
  pid=$(cat "$state/$name.pid")
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 75); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name ignored SIGTERM for 15 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$state/$name.pid"
}

start_slurm() {
  local t1 started=""
  t1=$(date +%s.%N)
  if ! alive slurmctld; then
    say "starting slurmctld"
    rm -f "$state/slurmctld.pid"
    # -c: forget jobs saved by an earlier run; every `up` after a `down` starts empty.
    slurmctld -c
    started=1
    wait_for 30 "slurmctld answers scontrol ping" ctld_ok || { show_logs; die "slurmctld did not come up"; }
  fi
  if ! alive slurmd; then
    say "starting slurmd"
    rm -f "$state/slurmd.pid"
    # -N: be this node even if the hostname changes; -b: report boot time now.
    slurmd -N "$node" -b
    started=1
    wait_for 30 "slurmd PID file" alive slurmd || { show_logs; die "slurmd did not come up"; }
  fi
  local deadline=$(($(date +%s) + 60)) st resumed=""
  while :; do
    st=$(node_state)
    case "$st" in
      idle | mixed | allocated) break ;;
      down* | drain* | fail*)
        if [ -z "$resumed" ]; then
          say "node $node is $st: $(sinfo -h -R -o '%E' -n "$node")  -> resume"
          scontrol update nodename="$node" state=resume || true
          resumed=1
        fi
        ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
      sinfo -N -l || true
      show_logs
      die "node $node is '$st', not idle, after 60 s"
    fi
    sleep 0.2
  done
  if [ -n "$started" ]; then
    say "node $node is $st, $(awk -v a="$t1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s after starting the Slurm daemons"
  else
    say "node $node is $st"
  fi
}

cancel_all_jobs() {
  local jobs
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  [ -n "$jobs" ] || return 0
  say "cancelling jobs: $(echo $jobs)"
  # shellcheck disable=SC2086
  scancel $jobs 2>/dev/null || true
  wait_for 20 "the queue to empty" bash -c '! squeue -h -o %i | grep -q .' || true
}

# ---------------------------------------------------------------------------- checks

check() {
  local tmp id out t rc
  tmp=$(mktemp -d /tmp/shoal-slurm-check.XXXXXX)
  say "self-check 1: sbatch --wrap 'hostname; echo ok'"
  id=$(sbatch --parsable -J shoal-check-hello -o "$tmp/hello.out" --wrap 'hostname; echo ok')
  wait_for 30 "job $id to finish" bash -c "! squeue -h -j $id -o %i 2>/dev/null | grep -q . && grep -qx ok '$tmp/hello.out'" ||
    { cat "$tmp/hello.out" 2>/dev/null; show_logs; die "job $id did not print ok"; }
  say "  job $id printed: $(tr '\n' ' ' <"$tmp/hello.out")"

  say "self-check 2: sbatch -n 2 --wrap 'srun hostname'"
  id=$(sbatch --parsable -J shoal-check-two -n 2 -o "$tmp/two.out" \
    --wrap 'echo "ntasks=$SLURM_NTASKS"; srun hostname')
  wait_for 30 "job $id to finish" bash -c "! squeue -h -j $id -o %i 2>/dev/null | grep -q . && [ \$(grep -vc '^ntasks=' '$tmp/two.out') -eq 2 ]" ||
    { cat "$tmp/two.out" 2>/dev/null; show_logs; die "job $id did not run 2 tasks"; }
  say "  job $id printed: $(tr '\n' ' ' <"$tmp/two.out")"

  say "self-check 3: sbatch sleep 600, see it RUNNING, scancel it"
  id=$(sbatch --parsable -J shoal-check-sleep -o /dev/null --wrap 'sleep 600')
  wait_for 30 "job $id RUNNING" bash -c "[ \"\$(squeue -h -j $id -o %T)\" = RUNNING ]" ||
    { squeue; die "job $id did not start"; }
  say "  squeue: $(squeue -h -j "$id" -o '%i %j %T %M %D %C')"
  t=$(date +%s.%N)
  scancel "$id"
  wait_for 30 "job $id to leave squeue" bash -c "! squeue -h -j $id -o %i 2>/dev/null | grep -q ." ||
    { squeue; die "job $id still in squeue after scancel"; }
  say "  after scancel, job $id left squeue in $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s;" \
    "scontrol: $(scontrol show job "$id" 2>&1 | grep -o 'JobState=[^ ]* Reason=[^ ]*' || echo 'already purged')"

  say "self-check 4: four 2-task jobs run at once on $(nproc) real cores"
  local ids=() i
  for i in 1 2 3 4; do ids+=("$(sbatch --parsable -J "shoal-check-par$i" -n 2 -o /dev/null --wrap 'sleep 600')"); done
  wait_for 30 "4 jobs RUNNING" bash -c "[ \$(squeue -h -j $(IFS=,; echo "${ids[*]}") -t RUNNING -o %i | wc -l) -eq 4 ]" ||
    { squeue; die "4 jobs of 2 tasks did not run at once"; }
  say "  squeue: $(squeue -h -j "$(IFS=,; echo "${ids[*]}")" -o '%i:%T:%C' | tr '\n' ' ')"
  scancel "${ids[@]}"
  wait_for 20 "the 4 jobs to leave squeue" bash -c "! squeue -h -j $(IFS=,; echo "${ids[*]}") -o %i | grep -q ." || true

  say "self-check 5: a job that exits 3"
  id=$(sbatch --parsable -J shoal-check-fail -o /dev/null --wrap 'exit 3')
  wait_for 30 "job $id to finish" bash -c "! squeue -h -j $id -o %i 2>/dev/null | grep -q ." || die "job $id did not finish"
  say "  scontrol: $(scontrol show job "$id" 2>&1 | grep -o 'JobState=[^ ]* Reason=[^ ]*\|ExitCode=[^ ]*' | tr '\n' ' ' || true)"

  say "what Slurm says about jobs that cannot run:"
  set +e
  out=$(sbatch --parsable -p nosuch -o /dev/null --wrap true 2>&1)
  rc=$?
  set -e
  say "  sbatch -p nosuch     -> exit $rc: $out"
  [ "$rc" -ne 0 ] || scancel "$out"
  # EnforcePartLimits is left at its default (NO): a job bigger than the partition is
  # accepted and pends for ever with Reason=PartitionConfig; a launcher must notice.
  set +e
  out=$(sbatch --parsable -n 1000 -o /dev/null --wrap true 2>&1)
  rc=$?
  set -e
  say "  sbatch -n 1000       -> exit $rc: $out"
  if [ "$rc" -eq 0 ]; then
    wait_for 10 "job $out pending with a reason" bash -c "squeue -h -j $out -o %r | grep -qvx None" || true
    say "  squeue -o '%i %T %r': $(squeue -h -j "$out" -o '%i %T %r')"
    scancel "$out"
  fi
  set +e
  out=$(sbatch --parsable -n 1 --mem 999999 -o /dev/null --wrap true 2>&1)
  rc=$?
  set -e
  say "  sbatch --mem 999999  -> exit $rc: $out"
  [ "$rc" -ne 0 ] || scancel "$out"
  # The node full: a second job waits for resources.
  local big wait1
  big=$(sbatch --parsable -J shoal-check-full -n "$cpus" -o /dev/null --wrap 'sleep 600')
  wait_for 30 "job $big RUNNING" bash -c "[ \"\$(squeue -h -j $big -o %T)\" = RUNNING ]" || true
  wait1=$(sbatch --parsable -J shoal-check-wait -n 1 -o /dev/null --wrap true)
  wait_for 10 "job $wait1 pending with a reason" bash -c "squeue -h -j $wait1 -o %r | grep -qvx None" || true
  say "  node full (job $big holds all $cpus CPUs), squeue -o '%i %T %r':"
  squeue -h -j "$big,$wait1" -o '      %i %T %r'
  scancel "$big" "$wait1"
  wait_for 20 "check jobs to leave squeue" bash -c "! squeue -h -j $big,$wait1 -o %i 2>/dev/null | grep -q ." || true
  rm -rf "$tmp"
  say "self-checks passed"
}

# ---------------------------------------------------------------------------- main

summary() {
  say "summary:"
  echo "    $(sinfo --version), config $conf, logs $log_dir/, PIDs in $state/"
  local n
  for n in munged slurmctld slurmd; do
    if alive "$n"; then echo "    $n: pid $(cat "$state/$n.pid") (started by this script)"; else echo "    $n: not started by this script"; fi
  done
  sinfo -o '    %P %a %l %D %T %N %c' || true
  echo "    $(scontrol show node | grep -o 'CPUTot=[^ ]*\|RealMemory=[^ ]*\|State=[^ ]*' | tr '\n' ' ')"
}

up() {
  install -d -m 0755 "$state"
  install_packages
  local changed=""
  write_config && changed=1
  start_munge
  if [ -n "$changed" ] && { alive slurmctld || alive slurmd; }; then
    say "config changed: restarting the Slurm daemons"
    stop slurmd
    stop slurmctld
  fi
  local fresh=""
  alive slurmctld && alive slurmd || fresh=1
  start_slurm
  if [ -n "$fresh" ] || [ -n "${SHOAL_SLURM_CHECK:-}" ]; then
    check
  else
    say "already up; self-checks skipped (run '$0 check' for them)"
  fi
  summary
  say "up took $(elapsed) s"
}

down() {
  if alive slurmctld && ctld_ok; then cancel_all_jobs; fi
  stop slurmd
  stop slurmctld
  stop munged
  say "down ($(elapsed) s); packages stay installed"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  check) check ;;
  status) summary ;;
  *) echo "usage: $0 up|down|check|status" >&2; exit 2 ;;
esac
