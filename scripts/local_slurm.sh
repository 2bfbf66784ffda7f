#!/usr/bin/env bash
# A real one-node SLURM cluster on 127.0.0.1, for advtrain's `slurm` tests and for trying
# `hydra/launcher=slurm` without a cluster.
#
#   sudo scripts/local_slurm.sh up      # install (Debian: slurm-wlm, munge) if missing, start
#   eval "$(scripts/local_slurm.sh env)"  # SLURM_CONF for sbatch/squeue/scontrol in this shell
#   scripts/local_slurm.sh status
#   sudo scripts/local_slurm.sh down    # stop exactly the daemons `up` started
#
# Everything lives in $ADVTRAIN_SLURM_DIR (default /tmp/advtrain-slurm): slurm.conf (written from
# this machine's CPUs and memory), the state and spool folders, logs and the PIDs of the daemons
# started. Accounting is real: a MariaDB server of its own (datadir in the folder, TCP on
# 127.0.0.1:$ADVTRAIN_SLURM_DB_PORT, default 3307) behind slurmdbd, so `sacct` (which submitit
# asks for job states) answers instead of failing.
set -euo pipefail

DIR="${ADVTRAIN_SLURM_DIR:-/tmp/advtrain-slurm}"
CONF="$DIR/slurm.conf"
NODE="$(hostname -s)"
DB_PORT="${ADVTRAIN_SLURM_DB_PORT:-3307}"
DB_PASS="advtrain-local"

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "local_slurm.sh $1: must run as root (munged, slurmctld and slurmd run as root here)" >&2
        exit 1
    fi
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null; then
        return
    fi
    echo "local_slurm.sh: installing slurm-wlm, slurmdbd, munge, mariadb-server (Debian)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server \
        >/dev/null
}

write_conf() {
    local cpus mem_mb
    cpus="$(nproc)"
    mem_mb="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF" <<EOF
# Written by scripts/local_slurm.sh: a one-node cluster on 127.0.0.1.
ClusterName=advtrain-local
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Requeued jobs (preemption, \`scontrol requeue\`) may start again at once.
JobRequeue=1
# Accounting through slurmdbd (MariaDB), so sacct answers.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
# Give a signalled job time to write its checkpoint before it is killed.
KillWait=30
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=local Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    cat >"$DIR/slurmdbd.conf" <<EOF
# Written by scripts/local_slurm.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/slurmdbd.conf"
}

start_database() {
    # A MariaDB server of our own for slurmdbd: its data, socket and PID live in $DIR.
    if [ -f "$DIR/mariadb.pid" ] && kill -0 "$(cat "$DIR/mariadb.pid")" 2>/dev/null; then
        return
    fi
    if [ ! -d "$DIR/mysql/mysql" ]; then
        mariadb-install-db --user=root --datadir="$DIR/mysql" >"$DIR/log/mariadb-install.log" 2>&1
    fi
    mariadbd --user=root --datadir="$DIR/mysql" --socket="$DIR/mysql.sock" \
        --pid-file="$DIR/mariadb.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
        --skip-name-resolve --log-error="$DIR/log/mariadb.log" >/dev/null 2>&1 &
    if ! wait_for 60 mariadb -S "$DIR/mysql.sock" -e "SELECT 1"; then
        echo "local_slurm.sh: MariaDB did not start; see $DIR/log/mariadb.log" >&2
        exit 1
    fi
    mariadb -S "$DIR/mysql.sock" <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

wait_for() {
    # wait_for SECONDS COMMAND...: retries COMMAND until it succeeds.
    local seconds="$1"
    shift
    for _ in $(seq 1 $((seconds * 2))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    return 1
}

start_daemon() {
    # start_daemon NAME PIDFILE COMMAND...: starts a daemon unless its recorded PID is alive.
    local name="$1" pidfile="$2"
    shift 2
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "local_slurm.sh: $name already running (pid $(cat "$pidfile"))" >&2
        return
    fi
    "$@"
}

up() {
    need_root up
    install_packages
    write_conf
    # munge: a key (Debian's package makes one), and a daemon of our own with its own socket.
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --force >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    if ! pgrep -x munged >/dev/null; then
        # munged runs as its own user (it cannot write into $DIR): record its PID ourselves, so
        # `down` stops it, and only when `up` started it.
        runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
        if ! wait_for 10 pgrep -x munged; then
            echo "local_slurm.sh: munged did not start" >&2
            exit 1
        fi
        pgrep -n -x munged >"$DIR/munged.pid"
    fi
    export SLURM_CONF="$CONF"
    start_database
    start_daemon slurmdbd "$DIR/slurmdbd.pid" /usr/sbin/slurmdbd
    if ! wait_for 30 sacctmgr -n list cluster; then
        echo "local_slurm.sh: slurmdbd did not answer; see $DIR/log/slurmdbd.log" >&2
        tail -n 20 "$DIR/log/slurmdbd.log" >&2 || true
        exit 1
    fi
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx advtrain-local; then
        sacctmgr -i add cluster advtrain-local >/dev/null
    fi
    start_daemon slurmctld "$DIR/slurmctld.pid" /usr/sbin/slurmctld -f "$CONF" -i
    start_daemon slurmd "$DIR/slurmd.pid" /usr/sbin/slurmd -f "$CONF"
    # Wait for the node to be idle.
    for _ in $(seq 1 60); do
        state="$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)"
        if [ "$state" = "idle" ] || [ "$state" = "mix" ] || [ "$state" = "alloc" ]; then
            echo "local_slurm.sh: cluster up (node $NODE $state); export SLURM_CONF=$CONF"
            return
        fi
        if [ "$state" = "down" ] || [ "$state" = "drain" ] || [ "$state" = "unk" ]; then
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        fi
        sleep 1
    done
    echo "local_slurm.sh: the node did not come up; see $DIR/log/" >&2
    sinfo >&2 || true
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
}

stop_pid() {
    local name="$1" pidfile="$2"
    if [ -f "$pidfile" ]; then
        local pid
        pid="$(cat "$pidfile")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
            echo "local_slurm.sh: stopped $name ($pid)"
        fi
        rm -f "$pidfile"
    fi
}

down() {
    need_root down
    stop_pid slurmd "$DIR/slurmd.pid"
    stop_pid slurmctld "$DIR/slurmctld.pid"
    stop_pid slurmdbd "$DIR/slurmdbd.pid"
    stop_pid mariadb "$DIR/mariadb.pid"
    stop_pid munged "$DIR/munged.pid"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    status) SLURM_CONF="$CONF" sinfo && SLURM_CONF="$CONF" squeue ;;
    *)
        echo "usage: $0 up|down|env|status" >&2
        exit 2
        ;;
esac
