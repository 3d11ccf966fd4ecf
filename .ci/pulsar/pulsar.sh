#!/usr/bin/env bash
# Run a real Apache Pulsar 3.0.x standalone (one broker + one bookie in one JVM, RocksDB metadata, no ZooKeeper,
# no functions worker) from Maven Central jars, on loopback only.
#
#   pulsar.sh start <data_dir> <broker_port> <web_port> <bookie_port>
#       Starts a broker and prints its PID on stdout once it is ready: the admin REST API lists public/default
#       and GET /admin/v2/brokers/health (a produce/consume round trip through the broker) answers "ok".
#       A missing or empty <data_dir> is a fresh broker (--wipe-data); a <data_dir> that an earlier start made
#       is restarted with its data. On failure or after PULSAR_START_TIMEOUT seconds it prints the log tail on
#       stderr, stops what it started and exits 1.
#   pulsar.sh stop <pid>
#       SIGTERM (the shutdown hook closes broker and bookie), waits up to PULSAR_STOP_TIMEOUT seconds, then
#       SIGKILL. Refuses a PID that is not a Pulsar standalone JVM.
#   pulsar.sh version      prints the broker version (PulsarVersionStarter)
#   pulsar.sh classpath    resolves (if needed) and prints the path of the cached classpath file
#
# Environment (all optional):
#   PULSAR_JAVA            java binary (default: /usr/bin/java if present, else java on PATH); Pulsar 3.0 wants 17
#   PULSAR_MEM             JVM memory flags (default: -Xms256m -Xmx768m -XX:MaxDirectMemorySize=512m)
#   PULSAR_JIT_OPTS        JIT flags (default: -XX:TieredStopAtLevel=1, C1 only: starts ~2x faster on 2 busy cores;
#                          set it empty for full C2 when benchmarking the broker itself)
#   PULSAR_EXTRA_OPTS      extra JVM flags
#   PULSAR_EXTRA_CONF      extra standalone.conf lines (key=value, newline-separated); they replace the same
#                          keys of standalone.conf, e.g. PULSAR_EXTRA_CONF=brokerDeduplicationEnabled=true
#   PULSAR_START_TIMEOUT   readiness deadline in seconds (default 240)
#   PULSAR_STOP_TIMEOUT    graceful stop deadline in seconds (default 60)
#   PULSAR_CACHE_DIR       where the resolved classpath is cached (default ${XDG_CACHE_HOME:-~/.cache}/electric-pulsar)
#   PULSAR_MVN             mvn binary (default mvn); PULSAR_MVN_ARGS extra mvn arguments (e.g. -o)
#   PULSAR_MVN_SETTINGS    Maven settings file (default: settings.xml beside this script)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MAIN_CLASS=org.apache.pulsar.PulsarStandaloneStarter
MARKER=.pulsar-runner   # written into every data dir that `start` created

log() { printf 'pulsar.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

java_bin() {
    if [[ -n ${PULSAR_JAVA:-} ]]; then
        printf '%s\n' "$PULSAR_JAVA"
    elif [[ -x /usr/bin/java ]]; then
        printf '%s\n' /usr/bin/java
    else
        command -v java || die "no java found (set PULSAR_JAVA)"
    fi
}

# Prints the path of a classpath file whose every jar exists, resolving it with Maven when needed.
classpath_file() {
    local cache=${PULSAR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/electric-pulsar}
    local settings=${PULSAR_MVN_SETTINGS:-$HERE/settings.xml}
    mkdir -p "$cache"
    local key
    key=$(cat "$HERE/pom.xml" "$settings" | sha256sum | cut -c1-16)
    local cp_file="$cache/classpath-$key.txt"
    if classpath_complete "$cp_file"; then
        printf '%s\n' "$cp_file"
        return
    fi
    # Serialise concurrent resolves (parallel tests starting private brokers).
    exec 9>"$cache/resolve.lock"
    flock 9
    if ! classpath_complete "$cp_file"; then
        log "resolving the Pulsar classpath with Maven (a cold resolve downloads ~210 MB)"
        local tmp="$cp_file.tmp.$$"
        # shellcheck disable=SC2086 # PULSAR_MVN_ARGS is a list of words
        if ! "${PULSAR_MVN:-mvn}" -B -q -s "$settings" -f "$HERE/pom.xml" ${PULSAR_MVN_ARGS:-} \
            dependency:build-classpath -Dmdep.outputFile="$tmp" -Dmdep.includeScope=runtime >"$tmp.log" 2>&1; then
            cat "$tmp.log" >&2
            rm -f "$tmp" "$tmp.log"
            die "mvn dependency:build-classpath failed"
        fi
        rm -f "$tmp.log"
        mv -f "$tmp" "$cp_file"
        classpath_complete "$cp_file" || die "resolved classpath $cp_file names missing jars"
    fi
    flock -u 9
    exec 9>&-
    printf '%s\n' "$cp_file"
}

classpath_complete() {
    local f=$1 jar
    [[ -s $f ]] || return 1
    local IFS=:
    for jar in $(<"$f"); do
        [[ -f $jar ]] || return 1
    done
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

is_alive() {
    local pid=$1 state
    [[ -r /proc/$pid/stat ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

is_pulsar() {
    [[ -r /proc/$1/cmdline ]] && tr '\0' '\n' <"/proc/$1/cmdline" | grep -qx "$MAIN_CLASS"
}

# Prints the key=value lines that start sets on top of standalone.conf; dies on a malformed PULSAR_EXTRA_CONF.
conf_overrides() {
    local broker_port=$1 web_port=$2 overrides line
    overrides=$(printf 'brokerServicePort=%s\nwebServicePort=%s\n%s\n' "$broker_port" "$web_port" \
        "${PULSAR_EXTRA_CONF:-}" | sed -e 's/^[[:space:]]*//' -e '/^$/d' -e '/^#/d')
    while IFS= read -r line; do
        [[ $line =~ ^[A-Za-z_][A-Za-z0-9_.]*= ]] || die "PULSAR_EXTRA_CONF line is not key=value: $line"
    done <<<"$overrides"
    printf '%s\n' "$overrides"
}

# Writes standalone.conf minus the overridden keys, then the overrides. Keys must not repeat: the bookie reads
# the file with commons-configuration, which turns a repeated key into a list.
write_conf() {
    local out=$1 overrides=$2
    {
        awk -v keys="$(printf '%s\n' "$overrides" | cut -d= -f1)" '
            BEGIN { n = split(keys, k, "\n"); for (i = 1; i <= n; i++) drop[k[i]] = 1 }
            { key = $0; sub(/[[:space:]]*=.*/, "", key); if (!(key in drop)) print }
        ' "$HERE/standalone.conf"
        printf '\n# --- set by pulsar.sh start ---\n%s\n' "$overrides"
    } >"$out"
}

log_tail() {
    local f=$1
    log "last lines of $f:"
    tail -n "${PULSAR_LOG_TAIL_LINES:-60}" "$f" >&2 || true
}

cmd_start() {
    [[ $# -eq 4 ]] || die "usage: pulsar.sh start <data_dir> <broker_port> <web_port> <bookie_port>"
    local data_dir=$1 broker_port=$2 web_port=$3 bookie_port=$4 p
    for p in "$broker_port" "$web_port" "$bookie_port"; do
        if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then die "not a port: $p"; fi
    done
    [[ $broker_port != "$web_port" && $broker_port != "$bookie_port" && $web_port != "$bookie_port" ]] \
        || die "the three ports must differ"
    for p in "$broker_port" "$web_port" "$bookie_port"; do
        ! port_in_use "$p" || die "127.0.0.1:$p is already in use"
    done

    local overrides
    overrides=$(conf_overrides "$broker_port" "$web_port")

    local wipe=()
    mkdir -p "$data_dir"
    data_dir=$(cd "$data_dir" && pwd)
    if [[ -z $(ls -A "$data_dir") ]]; then
        wipe=(--wipe-data)
        : >"$data_dir/$MARKER"
    elif [[ ! -e $data_dir/$MARKER ]]; then
        die "$data_dir is neither empty nor a data directory made by pulsar.sh start"
    else
        if [[ -f $data_dir/pulsar.pid ]]; then
            local old
            old=$(<"$data_dir/pulsar.pid")
            if is_alive "$old" && is_pulsar "$old"; then
                die "a broker (pid $old) is still running on $data_dir"
            fi
        fi
        # The bookie takes its address from the cookie written on the first start.
        local cookie_port
        cookie_port=$(sed -n 's/.*bookieHost: "[^:]*:\([0-9]*\)".*/\1/p' "$data_dir/bk/current/VERSION" 2>/dev/null || true)
        if [[ -n $cookie_port && $cookie_port != "$bookie_port" ]]; then
            die "$data_dir holds a bookie on port $cookie_port; restart it with bookie_port $cookie_port"
        fi
    fi
    # JVM scratch (extracted RocksDB/Netty native libraries); a SIGKILLed broker leaves its copies behind.
    rm -rf "$data_dir/tmp"
    mkdir -p "$data_dir/tmp"
    write_conf "$data_dir/standalone.conf" "$overrides"

    local java cp_file
    java=$(java_bin)
    cp_file=$(classpath_file)

    local mem
    read -r -a mem <<<"${PULSAR_MEM:--Xms256m -Xmx768m -XX:MaxDirectMemorySize=512m}"
    local jit=() extra=()
    read -r -a jit <<<"${PULSAR_JIT_OPTS--XX:TieredStopAtLevel=1}"
    [[ -n ${PULSAR_EXTRA_OPTS:-} ]] && read -r -a extra <<<"$PULSAR_EXTRA_OPTS"
    local opts=(
        "${mem[@]}"
        "${jit[@]}"
        -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError
        -Djava.io.tmpdir="$data_dir/tmp"
        -Djava.net.preferIPv4Stack=true
        -Dio.netty.tryReflectionSetAccessible=true
        --add-opens java.base/java.io=ALL-UNNAMED --add-opens java.base/java.util.zip=ALL-UNNAMED
        --add-opens java.base/java.nio=ALL-UNNAMED --add-opens java.base/jdk.internal.misc=ALL-UNNAMED
        --add-opens java.base/sun.net=ALL-UNNAMED --add-opens java.management/sun.management=ALL-UNNAMED
        --add-opens java.base/jdk.internal.platform=ALL-UNNAMED
        -Dbookkeeper.metadata.bookie.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataBookieDriver
        -Dbookkeeper.metadata.client.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataClientDriver
        -Dlog4j2.is.webapp=false -Dlog4j.shutdownHookEnabled=false
        -Dlog4j.configurationFile="$HERE/log4j2.properties"
        "${extra[@]}"
        -cp "$(<"$cp_file")"
        "$MAIN_CLASS"
        --config "$data_dir/standalone.conf"
        --no-functions-worker --no-stream-storage
        --advertised-address 127.0.0.1
        --metadata-dir "$data_dir/metadata"
        --bookkeeper-dir "$data_dir/bk"
        --bookkeeper-port "$bookie_port"
        "${wipe[@]}"
    )

    local logf=$data_dir/pulsar.log
    printf '\n===== pulsar.sh start %s (%s) =====\n' "$(date -u +%FT%TZ)" "${wipe[*]:-restart}" >>"$logf"
    # The working directory matters: a data/standalone/zookeeper below it would switch the standalone to
    # ZooKeeper mode, so run inside the data dir (which never has one). setsid detaches the broker from the
    # caller's process group; run from a background subshell it execs without forking, so $! is the JVM.
    (
        cd "$data_dir"
        unset PULSAR_STANDALONE_USE_ZOOKEEPER
        exec setsid "$java" "${opts[@]}" </dev/null >>"$logf" 2>&1
    ) &
    local pid=$!
    printf '%s\n' "$pid" >"$data_dir/pulsar.pid"
    log "started pid $pid (broker 127.0.0.1:$broker_port, web $web_port, bookie $bookie_port, log $logf)"

    local timeout=${PULSAR_START_TIMEOUT:-240} start=$SECONDS
    local base="http://127.0.0.1:$web_port/admin/v2"
    while :; do
        if ! is_alive "$pid"; then
            log "the broker exited during start-up"
            log_tail "$logf"
            exit 1
        fi
        # Tenants first: asking for public's namespaces before the tenant exists logs an ERROR per poll.
        if curl -sf --max-time 5 "$base/tenants" 2>/dev/null | grep -q '"public"' \
            && curl -sf --max-time 5 "$base/namespaces/public" 2>/dev/null | grep -q '"public/default"' \
            && [[ $(curl -sf --max-time 30 "$base/brokers/health" 2>/dev/null) == ok ]]; then
            break
        fi
        if ((SECONDS - start >= timeout)); then
            log "not ready after ${timeout}s; stopping pid $pid"
            log_tail "$logf"
            stop_pid "$pid" >/dev/null 2>&1 || true
            exit 1
        fi
        sleep 1
    done
    log "ready after $((SECONDS - start))s"
    printf '%s\n' "$pid"
}

stop_pid() {
    local pid=$1 timeout=${PULSAR_STOP_TIMEOUT:-60} start=$SECONDS
    kill -TERM "$pid" 2>/dev/null || return 0
    while is_alive "$pid"; do
        if ((SECONDS - start >= timeout)); then
            log "pid $pid still running after ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            local k=0
            while is_alive "$pid" && ((k++ < 100)); do sleep 0.1; done
            ! is_alive "$pid" || die "pid $pid survived SIGKILL"
            return 0
        fi
        sleep 0.2
    done
}

cmd_stop() {
    [[ $# -eq 1 && $1 =~ ^[0-9]+$ ]] || die "usage: pulsar.sh stop <pid>"
    local pid=$1
    if ! is_alive "$pid"; then
        log "pid $pid is not running"
        return 0
    fi
    is_pulsar "$pid" || die "pid $pid is not a Pulsar standalone ($MAIN_CLASS); not stopping it"
    stop_pid "$pid"
    log "stopped pid $pid"
}

cmd_version() {
    local java cp_file
    java=$(java_bin)
    cp_file=$(classpath_file)
    "$java" -cp "$(<"$cp_file")" org.apache.pulsar.PulsarVersionStarter 2>/dev/null \
        | sed -n 's/^Current version of pulsar is: //p'
}

case ${1:-} in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    version) cmd_version ;;
    classpath) classpath_file ;;
    *) die "usage: pulsar.sh start <data_dir> <broker_port> <web_port> <bookie_port> | stop <pid> | version | classpath" ;;
esac
