#!/usr/bin/env bash
# A single-node Slurm cluster for the test suite, from Debian's slurm-wlm and munge packages.
#
#   tests/services/slurm.sh start  DIR   start munged (unless munge already answers), slurmctld and slurmd;
#                                        wait until the node is idle; print `export SLURM_CONF=DIR/slurm.conf`
#   tests/services/slurm.sh stop   DIR   cancel the cluster's jobs and stop exactly the daemons `start` started
#   tests/services/slurm.sh status DIR   show the daemons and the node; exit 0 when the cluster is up, 3 if not
#
# Everything (configuration, state, spool, logs, pid files) lives in DIR, so several clusters can coexist: the
# ports are the first free pair from 6817/6818 upwards (override with SLURM_SERVICE_CTLD_PORT/_SLURMD_PORT).
# Only stdout carries the `export` line, so `eval "$(tests/services/slurm.sh start DIR)"` works; messages go to
# stderr. See tests/services/README.md.
set -euo pipefail
# The daemons live in sbin, which is not on every PATH.
PATH=$PATH:/usr/sbin:/sbin

PROG=slurm.sh
START_TIMEOUT=${SLURM_SERVICE_TIMEOUT:-60}   # seconds to wait for the node to become idle
DAEMON_TIMEOUT=30                            # seconds to wait for one daemon to come up
STOP_TIMEOUT=15                              # seconds to wait for one daemon to exit after SIGTERM

info() { echo "$PROG: $*" >&2; }
die() {
    echo "$PROG: error: $*" >&2
    exit 1
}

usage() {
    echo "usage: $PROG start|stop|status DIR" >&2
    exit 2
}

# Print the last lines of the given log files (those that exist) to stderr.
show_logs() {
    local file
    for file in "$@"; do
        if [[ -s $file ]]; then
            echo "---- last lines of $file ----" >&2
            tail -n 25 "$file" >&2 || true
        fi
    done
}

# Fail naming the daemon and showing its logs.
daemon_failed() {
    local name=$1 message=$2
    shift 2
    echo "$PROG: error: $name: $message" >&2
    show_logs "$@"
    exit 1
}

check_requirements() {
    local missing=() command
    for command in slurmctld slurmd sinfo scontrol squeue scancel sbatch munged munge unmunge runuser; do
        command -v "$command" >/dev/null 2>&1 || missing+=("$command")
    done
    if ((${#missing[@]})); then
        die "missing ${missing[*]}: install the Debian packages slurm-wlm and munge" \
            "(apt-get install -y slurm-wlm munge, or setup_profile.sh --apt slurm-wlm --apt munge)"
    fi
    if ((EUID != 0)); then
        die "must run as root: slurmd runs jobs as root here (SlurmUser=root) and munged is started as the munge user"
    fi
}

# True when process PID exists and is not a zombie (pid 1 may be slow to reap, or never reap, daemons' remains).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != [ZX] ]]
}

# Print the pid of daemon NAME recorded in PIDFILE when that process is alive and is NAME; with MATCH, its command
# line must also contain MATCH (the configuration file), so a recycled pid is never taken for ours.
live_pid() {
    local name=$1 pidfile=$2 match=${3:-} pid cmdline
    [[ -s $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] && alive "$pid" || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
    if [[ -n $match ]]; then
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
        [[ $cmdline == *"$match"* ]] || return 1
    fi
    echo "$pid"
}

# Send SIGTERM to each NAME:PID given, wait (bounded) for them to exit, then SIGKILL the survivors.
kill_and_wait() {
    local entry waited=0 remaining
    for entry in "$@"; do
        kill -TERM "${entry#*:}" 2>/dev/null || true
    done
    while :; do
        remaining=()
        for entry in "$@"; do
            ! alive "${entry#*:}" || remaining+=("$entry")
        done
        ((${#remaining[@]})) || return 0
        ((waited < STOP_TIMEOUT * 10)) || break
        sleep 0.1
        waited=$((waited + 1))
    done
    for entry in "${remaining[@]}"; do
        info "${entry%%:*} (pid ${entry#*:}) did not exit within ${STOP_TIMEOUT}s: sending SIGKILL"
        kill -KILL "${entry#*:}" 2>/dev/null || true
    done
    waited=0
    for entry in "${remaining[@]}"; do
        while alive "${entry#*:}" && ((waited < 50)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        ! alive "${entry#*:}" || die "${entry%%:*} (pid ${entry#*:}) survived SIGKILL"
    done
}

munge_answers() {
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

# TCP ports with a listening socket, one decimal number a line.
listening_ports() {
    local hex
    awk 'NR > 1 && $4 == "0A" { n = split($2, a, ":"); print a[n] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        while read -r hex; do echo $((16#$hex)); done
}

port_in_use() {
    local port=$1 ports
    if [[ -r /proc/net/tcp ]]; then
        # (Not `listening_ports | grep -q`: with pipefail, grep's early exit could make a match look like a miss.)
        ports=$(listening_ports)
        [[ $'\n'$ports$'\n' == *$'\n'$port$'\n'* ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
    fi
}

# Print "CTLD_PORT SLURMD_PORT": the first pair of free ports from 6817/6818 upwards.
pick_ports() {
    if [[ -n ${SLURM_SERVICE_CTLD_PORT:-} || -n ${SLURM_SERVICE_SLURMD_PORT:-} ]]; then
        echo "${SLURM_SERVICE_CTLD_PORT:-6817} ${SLURM_SERVICE_SLURMD_PORT:-6818}"
        return
    fi
    local port
    for ((port = 6817; port < 6917; port += 2)); do
        if ! port_in_use "$port" && ! port_in_use $((port + 1)); then
            echo "$port $((port + 1))"
            return
        fi
    done
    die "no free pair of TCP ports between 6817 and 6917 for slurmctld/slurmd"
}

write_conf() {
    local node cpus mem_kb real_memory ports
    node=$(hostname -s)
    cpus=$(nproc)
    mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
    real_memory=$((mem_kb / 1024 * 8 / 10)) # MB, safely below what slurmd will find
    ((real_memory >= 1)) || real_memory=1
    ports=$(pick_ports)
    CTLD_PORT=${ports% *}
    SLURMD_PORT=${ports#* }
    cat >"$CONF" <<EOF
# Written by tests/services/slurm.sh: a single-node cluster without cgroups, systemd or accounting.
ClusterName=aiidamad
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_memory State=UNKNOWN
PartitionName=main Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

node_name() {
    sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$CONF" | head -n 1
}

node_state() {
    sinfo -h -N -n "$(node_name)" -o '%T' 2>/dev/null | head -n 1
}

ensure_munge() {
    if munge_answers; then
        if live_pid munged "$DIR/run/munged.pid" >/dev/null; then
            info "munged already running (started by this service, pid $(cat "$DIR/run/munged.pid"))"
        else
            rm -f "$DIR/run/munged.pid"
            info "munge already answers: using the running munged (it will not be stopped by '$PROG stop')"
        fi
        return
    fi
    rm -f "$DIR/run/munged.pid"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        info "creating the munge key /etc/munge/munge.key"
        install -d -o munge -g munge -m 0700 /etc/munge
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    info "starting munged"
    local waited=0 output
    if ! output=$(runuser -u munge -- munged </dev/null 2>&1); then
        # Another start may have won the race for the socket: fine as long as munge now answers.
        munge_answers || daemon_failed munged "failed to start: $output" /var/log/munge/munged.log
        info "munge answers (started by someone else meanwhile): using it"
        return
    fi
    until munge_answers; do
        ((waited < DAEMON_TIMEOUT * 10)) || daemon_failed munged "does not answer after ${DAEMON_TIMEOUT}s" \
            /var/log/munge/munged.log
        sleep 0.1
        waited=$((waited + 1))
    done
    if live_pid munged /run/munge/munged.pid >/dev/null; then
        cp /run/munge/munged.pid "$DIR/run/munged.pid"
    else
        info "warning: munged answers but /run/munge/munged.pid names no munged: it will not be stopped by '$PROG stop'"
    fi
}

# Start daemon NAME (slurmctld or slurmd) in the foreground mode (-D) of a new session in the background, so that a
# start-up failure shows at once, and wait until it is alive and has written its pid file.
start_daemon() {
    local name=$1 pidfile=$2 waited=0 pid logs
    if live_pid "$name" "$pidfile" "$CONF" >/dev/null; then
        info "$name already running (pid $(cat "$pidfile"))"
        return
    fi
    rm -f "$pidfile"
    info "starting $name"
    setsid "$name" -D -f "$CONF" </dev/null >>"$DIR/log/$name.out" 2>&1 &
    pid=$!
    until live_pid "$name" "$pidfile" "$CONF" >/dev/null; do
        # The log file once the daemon has opened it, before that what it printed.
        logs=$DIR/log/$name.log
        [[ -s $logs ]] || logs=$DIR/log/$name.out
        alive "$pid" || daemon_failed "$name" "exited during start-up" "$logs"
        ((waited < DAEMON_TIMEOUT * 10)) || daemon_failed "$name" "wrote no pid file after ${DAEMON_TIMEOUT}s" "$logs"
        sleep 0.1
        waited=$((waited + 1))
    done
}

wait_for_controller() {
    local waited=0
    while :; do
        live_pid slurmctld "$DIR/run/slurmctld.pid" "$CONF" >/dev/null ||
            daemon_failed slurmctld "exited during start-up" "$DIR/log/slurmctld.log"
        scontrol ping 2>/dev/null | grep -q 'is UP' && return
        ((waited < DAEMON_TIMEOUT * 10)) ||
            daemon_failed slurmctld "does not answer 'scontrol ping' after ${DAEMON_TIMEOUT}s" "$DIR/log/slurmctld.log"
        sleep 0.1
        waited=$((waited + 1))
    done
}

wait_for_idle_node() {
    local waited=0 state node
    node=$(node_name)
    while :; do
        state=$(node_state || true)
        # `idle`, or `mixed`/`allocated` when jobs run already (an idempotent start of a busy cluster).
        case $state in
            idle | mixed | allocated | completing) return ;;
        esac
        for name in slurmctld slurmd; do
            live_pid "$name" "$DIR/run/$name.pid" "$CONF" >/dev/null ||
                daemon_failed "$name" "exited while waiting for node $node to become idle" "$DIR/log/$name.log"
        done
        if ((waited >= START_TIMEOUT * 5)); then
            echo "$PROG: error: node $node is '${state:-unknown}' after ${START_TIMEOUT}s, not idle" >&2
            sinfo -N -l -R 2>&1 | sed 's/^/  /' >&2 || true
            show_logs "$DIR/log/slurmd.log" "$DIR/log/slurmctld.log"
            exit 1
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
}

cmd_start() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
    ensure_munge
    if live_pid slurmctld "$DIR/run/slurmctld.pid" "$CONF" >/dev/null ||
        live_pid slurmd "$DIR/run/slurmd.pid" "$CONF" >/dev/null; then
        [[ -s $CONF ]] || die "daemons of $DIR are running but $CONF is missing: run '$PROG stop $DIR' first"
        info "keeping the configuration of the running daemons: $CONF"
    else
        # A fresh start: forget whatever a previous run left in DIR (state, spool, stale pid files).
        rm -rf "${DIR:?}/state" "${DIR:?}/spool" "$DIR/run/slurmctld.pid" "$DIR/run/slurmd.pid"
        mkdir -p "$DIR/state" "$DIR/spool"
        write_conf
        info "wrote $CONF (slurmctld port $CTLD_PORT, slurmd port $SLURMD_PORT)"
    fi
    export SLURM_CONF=$CONF
    start_daemon slurmctld "$DIR/run/slurmctld.pid"
    wait_for_controller
    start_daemon slurmd "$DIR/run/slurmd.pid"
    wait_for_idle_node
    info "node $(node_name) is $(node_state) (partition $(sed -n 's/^PartitionName=\([^ ]*\).*/\1/p' "$CONF"))"
    echo "export SLURM_CONF=$CONF"
}

cmd_stop() {
    local pid name waited=0
    if [[ -s $CONF ]] && live_pid slurmctld "$DIR/run/slurmctld.pid" "$CONF" >/dev/null; then
        export SLURM_CONF=$CONF
        # Cancel the jobs first, so that no job steps outlive the daemons.
        local jobs
        jobs=$(timeout 10 squeue -h -o '%i' 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            info "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null || true
            while [[ -n $(timeout 5 squeue -h -t running,completing -o '%i' 2>/dev/null || true) ]] &&
                ((waited < STOP_TIMEOUT * 5)); do
                sleep 0.2
                waited=$((waited + 1))
            done
        fi
    fi
    local stopping=()
    for name in slurmd slurmctld; do
        if pid=$(live_pid "$name" "$DIR/run/$name.pid" "$CONF"); then
            info "stopping $name (pid $pid)"
            stopping+=("$name:$pid")
        fi
    done
    ((${#stopping[@]} == 0)) || kill_and_wait "${stopping[@]}"
    rm -f "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid"
    if pid=$(live_pid munged "$DIR/run/munged.pid"); then
        info "stopping munged (pid $pid), which this service started"
        kill_and_wait "munged:$pid"
    fi
    rm -f "$DIR/run/munged.pid"
}

cmd_status() {
    local name pid up=0
    for name in slurmctld slurmd; do
        if pid=$(live_pid "$name" "$DIR/run/$name.pid" "$CONF"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: stopped"
            up=3
        fi
    done
    if pid=$(live_pid munged "$DIR/run/munged.pid"); then
        echo "munged: running (pid $pid, started by this service)"
    elif munge_answers; then
        echo "munged: answering (not started by this service)"
    else
        echo "munged: not answering"
        up=3
    fi
    if ((up == 0)); then
        export SLURM_CONF=$CONF
        echo "node $(node_name): $(node_state || echo unknown)"
        echo "export SLURM_CONF=$CONF"
    fi
    return "$up"
}

(($# == 2)) || usage
[[ -n $2 ]] || usage
case $1 in start | stop | status) ;; *) usage ;; esac
if [[ $1 == start ]]; then
    check_requirements
    mkdir -p "$2"
elif [[ ! -d $2 ]]; then
    [[ $1 == status ]] && echo "slurm.sh: no cluster in $2" && exit 3
    exit 0
fi
DIR=$(cd "$2" && pwd -P)
CONF=$DIR/slurm.conf
case $1 in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
esac
