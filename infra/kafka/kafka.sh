#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker+controller) for development and tests.
#
# The broker comes from Maven Central (infra/kafka/pom.xml), is cached under .cache/kafka/lib and runs
# as one plain `java -cp '<lib>/*' kafka.Kafka` process bound to 127.0.0.1 only.
#
# Usage: infra/kafka/kafka.sh fetch|up|down|status
#
#   fetch   resolve the broker's jars into .cache/kafka/lib (skipped when the stamp matches the pom)
#   up      fetch if needed, write config, format storage once, start the broker and wait until ready
#   down    stop the broker recorded in the data dir's PID file (TERM, then KILL after a grace period)
#   status  print whether the broker for this data dir is running (exit 0 running, 3 not running)
#
# Environment:
#   KAFKA_PORT              PLAINTEXT listener port                      (default 9092)
#   KAFKA_CONTROLLER_PORT   CONTROLLER listener port                     (default KAFKA_PORT+1)
#   KAFKA_DATA_DIR          config, logs, PID file and the log.dirs      (default .cache/kafka-data/$KAFKA_PORT)
#   KAFKA_START_TIMEOUT     seconds `up` waits for readiness             (default 120)
#   KAFKA_STOP_TIMEOUT      seconds `down` waits after SIGTERM           (default 30)
#   KAFKA_CLEAN=1           `down` also removes the data dir
#   KAFKA_HEAP_OPTS         JVM heap flags                               (default -Xms128m -Xmx512m)
#   KAFKA_JVM_OPTS          extra JVM flags
#   KAFKA_EXTRA_PROPERTIES  extra server.properties lines (newline separated), appended last
#   KAFKA_LIB_DIR           jar cache dir                                (default .cache/kafka/lib)
#   KAFKA_CDS=0             disable the class-data-sharing archive (see below)
#   MVN                     maven executable                             (default mvn)
#   KAFKA_SECURITY          plaintext, sasl_ssl or ssl                   (default plaintext)
#   STT_TOPIC_PARTITIONS    partitions of the topics a secured broker creates (default 6)
#
# Secured brokers (KAFKA_SECURITY=sasl_ssl: SCRAM-SHA-512 over TLS; ssl: mutual TLS) get a fresh data dir
# on every `up`: their own CA and broker certificate (openssl), SCRAM users `admin` (super user) and
# `stt-worker` created at format time, StandardAuthorizer, the worker's topics created and exactly the
# worker's documented ACLs granted to `stt-worker` (infra/kafka/SecureSetup.java, Kafka's Admin API). The
# controller listener is TLS with client certificates (broker only). Client settings for `stt-worker`
# are written to $KAFKA_DATA_DIR/client.env (NAME=value lines, absolute paths; sourceable).
#
# Start-up speed: the first broker that runs (and is stopped cleanly) dumps a dynamic AppCDS archive of
# the loaded classes into .cache/kafka/cds/; later starts map it, which cuts JVM class loading (roughly
# a third of the start time on a 2-core machine). A stale or mismatched archive is ignored by the JVM.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
POM="$SCRIPT_DIR/pom.xml"
CACHE_DIR="$REPO_ROOT/.cache/kafka"
LIB_DIR="${KAFKA_LIB_DIR:-$CACHE_DIR/lib}"
STAMP="$LIB_DIR/.complete"
CDS_DIR="$CACHE_DIR/cds"
KAFKA_CDS="${KAFKA_CDS:-1}"
MVN="${MVN:-mvn}"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-$REPO_ROOT/.cache/kafka-data/$KAFKA_PORT}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-}"
KAFKA_EXTRA_PROPERTIES="${KAFKA_EXTRA_PROPERTIES:-}"
KAFKA_SECURITY="${KAFKA_SECURITY:-plaintext}"
STT_TOPIC_PARTITIONS="${STT_TOPIC_PARTITIONS:-6}"
# The worker's default names (pipeline/settings.py): its topics, group and transactional-id prefix.
WORKER_TOPICS=(stt.audio stt.turns stt.transcripts stt.sessions stt.dead-letter)
WORKER_GROUP="stt-pipeline"
WORKER_TXN_PREFIX="stt-pipeline.stt-pipeline."

# Marker that lets `down` (KAFKA_CLEAN=1) remove only directories this script populated.
DATA_MARKER=".stt-pipeline-kafka-data"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

now_ms() { date +%s%3N; }

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

is_port() { [[ "$1" =~ ^[0-9]+$ ]] && (( $1 > 0 && $1 < 65536 )); }

abs_data_dir() {
    mkdir -p "$KAFKA_DATA_DIR"
    KAFKA_DATA_DIR="$(cd "$KAFKA_DATA_DIR" && pwd)"
    PID_FILE="$KAFKA_DATA_DIR/kafka.pid"
    SERVER_PROPS="$KAFKA_DATA_DIR/server.properties"
    LOG4J_CONF="$KAFKA_DATA_DIR/log4j2.properties"
    SERVER_LOG="$KAFKA_DATA_DIR/server.log"
    STDOUT_LOG="$KAFKA_DATA_DIR/kafka.out"
    LOG_DIRS="$KAFKA_DATA_DIR/kraft-combined-logs"
    CDS_PENDING="$KAFKA_DATA_DIR/cds.pending"
    CERTS="$KAFKA_DATA_DIR/certs"
    CLIENT_ENV="$KAFKA_DATA_DIR/client.env"
}

# Paths without creating anything (for status/down on a dir that may not exist).
data_paths() {
    if [[ -d "$KAFKA_DATA_DIR" ]]; then KAFKA_DATA_DIR="$(cd "$KAFKA_DATA_DIR" && pwd)"; fi
    PID_FILE="$KAFKA_DATA_DIR/kafka.pid"
    SERVER_PROPS="$KAFKA_DATA_DIR/server.properties"
    SERVER_LOG="$KAFKA_DATA_DIR/server.log"
    CDS_PENDING="$KAFKA_DATA_DIR/cds.pending"
}

# kill -0 succeeds on a zombie too. An exited, not yet reaped process counts as dead, but only once all
# its threads are gone: a multi-threaded JVM's main thread turns zombie while other threads are still
# exiting and holding its sockets open.
pid_alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [[ -r "/proc/$1/stat" ]] || return 0
    local state
    state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
    [[ -n "$state" ]] || return 1
    [[ "$state" == Z ]] || return 0
    local threads
    threads="$(find "/proc/$1/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
    ((threads > 1))
}

# True if $1 is a live process that is a Kafka broker started with our server.properties
# (guards against a stale PID file whose PID got reused by an unrelated process).
is_our_broker() {
    local pid="$1"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    pid_alive "$pid" || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 0 # no procfs: trust the PID file
    local cmdline
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmdline" == *kafka.Kafka* && "$cmdline" == *"$SERVER_PROPS"* ]]
}

running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    is_our_broker "$pid" || return 1
    printf '%s' "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cmd_fetch() {
    command -v java >/dev/null 2>&1 || die "java not found on PATH (Kafka 4.x needs Java 17+)"
    local want
    want="$(pom_hash)"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
        return 0
    fi
    command -v "$MVN" >/dev/null 2>&1 || die "'$MVN' not found on PATH (needed once to fetch Kafka from Maven Central)"
    mkdir -p "$(dirname "$LIB_DIR")"
    # Serialise concurrent fetches (parallel test sessions on a fresh clone).
    local lock
    lock="$(dirname "$LIB_DIR")/.fetch.lock"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$lock"
        flock 9
        if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
            exec 9>&-
            return 0
        fi
    fi
    local t0 tmp
    t0="$(now_ms)"
    tmp="$LIB_DIR.tmp.$$"
    rm -rf "$tmp"
    log "fetching Kafka broker jars with Maven into $LIB_DIR ..."
    if ! "$MVN" -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp" 2>&1 \
        | sed 's/\x1b\[[0-9;]*m//g' >&2; then
        rm -rf "$tmp"
        die "maven failed to resolve $POM"
    fi
    ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "kafka_2.13 jar missing after fetch"; }
    printf '%s\n' "$want" >"$tmp/.complete"
    rm -rf "$LIB_DIR"
    mv "$tmp" "$LIB_DIR"
    log "fetched $(find "$LIB_DIR" -name '*.jar' | wc -l) jars in $(( ($(now_ms) - t0) / 1000 ))s"
    if command -v flock >/dev/null 2>&1; then exec 9>&-; fi
}

# Kafka cluster ids are a random UUID, base64url without padding (22 chars); Kafka avoids a leading '-'.
new_cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && break
    done
    printf '%s' "$id"
}

write_config() {
    cat >"$SERVER_PROPS" <<EOF
# Generated by infra/kafka/kafka.sh -- single-node KRaft broker, combined mode. Rewritten on every 'up'.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
$(listener_config)
log.dirs=$LOG_DIRS

num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false

# Internal topics: one replica, and few partitions so the first group/transaction is quick to set up.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# After a crash (SIGKILL) the restarted broker cannot re-register until the old incarnation's session
# expires (default 9 s); a shorter session makes crash/restart tests faster. Heartbeats go to the
# controller in the same JVM, so 4 missed beats still means a stalled process, not a network blip.
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000

num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
EOF
    if [[ -n "$KAFKA_EXTRA_PROPERTIES" ]]; then
        printf '\n# KAFKA_EXTRA_PROPERTIES\n%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$SERVER_PROPS"
    fi

    cat >"$LOG4J_CONF" <<EOF
# Generated by infra/kafka/kafka.sh: INFO to server.log only, noisy loggers turned down.
status = warn
name = stt-pipeline-kafka
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $SERVER_LOG
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.appinfo.name = org.apache.kafka.common.utils.AppInfoParser
logger.appinfo.level = WARN
# The full config dump (10 x ~250 lines per start); WARNs such as unknown keys still get through.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
EOF
}

listener_config() {
    local ports="//127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT"
    case "$KAFKA_SECURITY" in
    plaintext)
        cat <<EOF
listeners=PLAINTEXT:$ports
advertised.listeners=PLAINTEXT:$ports
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
        ;;
    sasl_ssl | ssl)
        local protocol=SASL_SSL
        [[ "$KAFKA_SECURITY" == ssl ]] && protocol=SSL
        cat <<EOF
listeners=SECURE:$ports
advertised.listeners=SECURE:$ports
controller.listener.names=CONTROLLER
inter.broker.listener.name=SECURE
listener.security.protocol.map=CONTROLLER:SSL,SECURE:$protocol
ssl.keystore.type=PEM
ssl.keystore.location=$CERTS/kafka-broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$CERTS/ca.pem
ssl.principal.mapping.rules=RULE:^CN=([^,]+)\$/\$1/,DEFAULT
listener.name.controller.ssl.client.auth=required
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:kafka-broker
allow.everyone.if.no.acl.found=false
EOF
        if [[ "$protocol" == SASL_SSL ]]; then
            cat <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.secure.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$ADMIN_PASSWORD";
EOF
        else
            echo "listener.name.secure.ssl.client.auth=required"
        fi
        ;;
    *) die "KAFKA_SECURITY must be plaintext, sasl_ssl or ssl, got '$KAFKA_SECURITY'" ;;
    esac
}

new_secret() { head -c 24 /dev/urandom | base64 | tr -d '/+=\n'; }

# A CA, the broker's certificate (127.0.0.1 and localhost) and client certificates for admin and stt-worker.
make_certs() {
    rm -rf "$CERTS"
    mkdir -p "$CERTS"
    chmod 700 "$CERTS"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$CERTS/ca.key" -out "$CERTS/ca.pem" -days 30 \
        -subj "/CN=stt-pipeline test CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    local name
    for name in kafka-broker admin stt-worker; do
        openssl req "${ec[@]}" -keyout "$CERTS/$name.key" -out "$CERTS/$name.csr" -subj "/CN=$name" 2>/dev/null
        openssl x509 -req -in "$CERTS/$name.csr" -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca.key" -CAcreateserial \
            -days 30 -out "$CERTS/$name.crt" \
            -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n') 2>/dev/null
        # Kafka's PEM key store: an unencrypted PKCS#8 key and its certificate in one file.
        openssl pkcs8 -topk8 -nocrypt -in "$CERTS/$name.key" -out "$CERTS/$name.p8"
        cat "$CERTS/$name.p8" "$CERTS/$name.crt" >"$CERTS/$name.pem"
        rm -f "$CERTS/$name.csr"
    done
    chmod 600 "$CERTS"/*
}

# Admin client properties (for SecureSetup.java) and the stt-worker client settings (client.env).
write_client_files() {
    local admin="$KAFKA_DATA_DIR/admin.properties"
    {
        echo "bootstrap.servers=127.0.0.1:$KAFKA_PORT"
        echo "ssl.truststore.type=PEM"
        echo "ssl.truststore.location=$CERTS/ca.pem"
        if [[ "$KAFKA_SECURITY" == sasl_ssl ]]; then
            echo "security.protocol=SASL_SSL"
            echo "sasl.mechanism=SCRAM-SHA-512"
            echo "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$ADMIN_PASSWORD\";"
        else
            echo "security.protocol=SSL"
            echo "ssl.keystore.type=PEM"
            echo "ssl.keystore.location=$CERTS/admin.pem"
        fi
    } >"$admin"
    chmod 600 "$admin"
    {
        echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT"
        if [[ "$KAFKA_SECURITY" == sasl_ssl ]]; then
            echo "KAFKA_SECURITY_PROTOCOL=SASL_SSL"
            echo "KAFKA_SASL_MECHANISM=SCRAM-SHA-512"
            echo "KAFKA_SASL_USERNAME=stt-worker"
            echo "KAFKA_SASL_PASSWORD=$WORKER_PASSWORD"
        else
            echo "KAFKA_SECURITY_PROTOCOL=SSL"
            echo "KAFKA_SSL_CERTFILE=$CERTS/stt-worker.crt"
            echo "KAFKA_SSL_KEYFILE=$CERTS/stt-worker.key"
        fi
        echo "KAFKA_SSL_CAFILE=$CERTS/ca.pem"
    } >"$CLIENT_ENV"
    chmod 600 "$CLIENT_ENV"
}

# Topics and the stt-worker ACLs, then client.env (written last: its presence means the broker is usable).
secure_setup() {
    write_client_files
    local out
    if ! out="$(java -Xmx256m -XX:TieredStopAtLevel=1 -Xshare:auto -Dlog4j2.configurationFile="$LOG4J_CONF" \
        -cp "$LIB_DIR/*" "$SCRIPT_DIR/SecureSetup.java" "$KAFKA_DATA_DIR/admin.properties" User:stt-worker \
        "$WORKER_GROUP" "$WORKER_TXN_PREFIX" "$STT_TOPIC_PARTITIONS" "${WORKER_TOPICS[@]}" 2>&1)"; then
        printf '%s\n' "$out" >&2
        rm -f "$CLIENT_ENV"
        die "creating topics and ACLs failed"
    fi
    log "$out"
}

format_storage() {
    if [[ -f "$LOG_DIRS/meta.properties" ]]; then
        return 0
    fi
    local cid out archive share_opts=""
    cid="$(new_cluster_id)"
    archive="$(cds_archive)"
    if [[ "$KAFKA_CDS" == "1" && -s "$archive" ]]; then
        share_opts="-XX:SharedArchiveFile=$archive -Xlog:cds=off -Xlog:cds+dynamic=off"
    fi
    local scram=()
    if [[ "$KAFKA_SECURITY" == sasl_ssl ]]; then
        scram=(--add-scram "SCRAM-SHA-512=[name=admin,password=$ADMIN_PASSWORD]"
            --add-scram "SCRAM-SHA-512=[name=stt-worker,password=$WORKER_PASSWORD]")
    fi
    # shellcheck disable=SC2086
    if ! out="$(java -Xmx256m -XX:TieredStopAtLevel=1 $share_opts -Dlog4j2.configurationFile="$LOG4J_CONF" \
        -cp "$LIB_DIR/*" kafka.tools.StorageTool format --cluster-id "$cid" --config "$SERVER_PROPS" \
        --standalone "${scram[@]}" 2>&1)"; then
        printf '%s\n' "$out" >&2
        die "storage format failed"
    fi
    log "formatted $LOG_DIRS (cluster id $cid)"
}

# The archive is only valid for this exact classpath and JVM, so both are part of its name.
cds_archive() {
    local java_bin key
    java_bin="$(readlink -f "$(command -v java)")"
    key="$( { cat "$STAMP" 2>/dev/null; printf '%s\n' "$java_bin" "$LIB_DIR"; } | sha256sum | cut -c1-16)"
    printf '%s/kafka-%s.jsa' "$CDS_DIR" "$key"
}

# Sets CDS_OPTS: map the archive if there is one, else have this JVM dump one when it exits cleanly.
cds_opts() {
    CDS_OPTS=""
    cds_finish 0 # leftovers of a broker that did not stop cleanly
    [[ "$KAFKA_CDS" == "1" ]] || return 0
    local archive
    archive="$(cds_archive)"
    if [[ -s "$archive" ]]; then
        CDS_OPTS="-XX:SharedArchiveFile=$archive -Xshare:auto"
    else
        mkdir -p "$CDS_DIR"
        local tmp="$archive.$$.$RANDOM.tmp"
        printf '%s\n%s\n' "$tmp" "$archive" >"$CDS_PENDING"
        CDS_OPTS="-XX:ArchiveClassesAtExit=$tmp"
    fi
}

# After a broker stopped: publish the archive it dumped (only if it exited by itself, not SIGKILL).
cds_finish() {
    local clean_exit="$1"
    [[ -f "$CDS_PENDING" ]] || return 0
    local tmp archive
    tmp="$(sed -n 1p "$CDS_PENDING")"
    archive="$(sed -n 2p "$CDS_PENDING")"
    rm -f "$CDS_PENDING"
    [[ -n "$tmp" && "$tmp" == *.tmp ]] || return 0
    if [[ "$clean_exit" == "1" && -s "$tmp" && ! -e "$archive" ]]; then
        mv -f "$tmp" "$archive" && log "saved class-data-sharing archive $archive"
    fi
    rm -f "$tmp"
}

dump_logs() {
    log "---- last lines of $STDOUT_LOG ----"
    tail -n 30 "$STDOUT_LOG" >&2 2>/dev/null || true
    log "---- last lines of $SERVER_LOG ----"
    tail -n 40 "$SERVER_LOG" >&2 2>/dev/null || true
}

cmd_up() {
    is_port "$KAFKA_PORT" || die "bad KAFKA_PORT=$KAFKA_PORT"
    is_port "$KAFKA_CONTROLLER_PORT" || die "bad KAFKA_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT"
    [[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"
    local t0
    t0="$(now_ms)"
    cmd_fetch
    abs_data_dir
    local pid
    if pid="$(running_pid)"; then
        log "already running (pid $pid) on 127.0.0.1:$KAFKA_PORT, data dir $KAFKA_DATA_DIR"
        return 0
    fi
    rm -f "$PID_FILE"
    local p
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$p"; then die "127.0.0.1:$p is already in use by another process"; fi
    done

    touch "$KAFKA_DATA_DIR/$DATA_MARKER"
    if [[ "$KAFKA_SECURITY" != plaintext ]]; then
        # A secured broker: fresh storage, certificates and passwords on every start.
        rm -rf "$LOG_DIRS" "$CLIENT_ENV"
        ADMIN_PASSWORD="$(new_secret)"
        WORKER_PASSWORD="$(new_secret)"
        make_certs
    fi
    mkdir -p "$LOG_DIRS"
    write_config
    chmod 600 "$SERVER_PROPS"
    format_storage

    # Only log lines written by this start count for readiness.
    local log_offset=0
    [[ -f "$SERVER_LOG" ]] && log_offset="$(stat -c %s "$SERVER_LOG")"

    cds_opts

    local t_start
    t_start="$(now_ms)"
    # shellcheck disable=SC2086  # heap/JVM opts are intentionally word-split
    java -server $KAFKA_HEAP_OPTS $CDS_OPTS -Xlog:cds=off -Xlog:cds+dynamic=off \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
        -XX:CICompilerCount=2 -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1 \
        -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true \
        -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$KAFKA_DATA_DIR" \
        $KAFKA_JVM_OPTS \
        -cp "$LIB_DIR/*" kafka.Kafka "$SERVER_PROPS" \
        >>"$STDOUT_LOG" 2>&1 </dev/null &
    pid=$!
    printf '%s\n' "$pid" >"$PID_FILE"

    local deadline=$((t_start + KAFKA_START_TIMEOUT * 1000))
    while :; do
        if ! pid_alive "$pid"; then
            rm -f "$PID_FILE"
            cds_finish 0
            dump_logs
            die "broker process $pid exited during startup"
        fi
        if tail -c +"$((log_offset + 1))" "$SERVER_LOG" 2>/dev/null | grep -q 'Kafka Server started' \
            && port_open "$KAFKA_PORT"; then
            break
        fi
        if (($(now_ms) > deadline)); then
            dump_logs
            log "not ready after ${KAFKA_START_TIMEOUT}s; stopping pid $pid"
            kill -TERM "$pid" 2>/dev/null || true
            sleep 2
            if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
            rm -f "$PID_FILE"
            cds_finish 0
            die "broker did not become ready within ${KAFKA_START_TIMEOUT}s"
        fi
        sleep 0.2
    done
    if [[ "$KAFKA_SECURITY" != plaintext ]]; then secure_setup; fi
    local t_end
    t_end="$(now_ms)"
    printf 'kafka.sh: broker up on 127.0.0.1:%s (controller %s, pid %s) in %d.%03ds (JVM start to ready %d.%03ds), data dir %s\n' \
        "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$pid" \
        $(((t_end - t0) / 1000)) $(((t_end - t0) % 1000)) \
        $(((t_end - t_start) / 1000)) $(((t_end - t_start) % 1000)) "$KAFKA_DATA_DIR"
}

clean_data_dir() {
    if [[ "${KAFKA_CLEAN:-0}" != "1" || ! -d "$KAFKA_DATA_DIR" ]]; then
        return 0
    fi
    if [[ -f "$KAFKA_DATA_DIR/$DATA_MARKER" ]]; then
        rm -rf -- "$KAFKA_DATA_DIR"
        log "removed $KAFKA_DATA_DIR"
    else
        log "not removing $KAFKA_DATA_DIR: it was not created by kafka.sh (no $DATA_MARKER)"
    fi
}

cmd_down() {
    data_paths
    local pid
    if ! pid="$(running_pid)"; then
        [[ -f "$PID_FILE" ]] && rm -f "$PID_FILE"
        cds_finish 0
        log "not running (data dir $KAFKA_DATA_DIR)"
        clean_data_dir
        return 0
    fi
    local t0 clean_exit=1
    t0="$(now_ms)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((t0 + KAFKA_STOP_TIMEOUT * 1000))
    while pid_alive "$pid"; do
        if (($(now_ms) > deadline)); then
            log "pid $pid still alive after ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
            clean_exit=0
            kill -KILL "$pid" 2>/dev/null || true
            local i
            for ((i = 0; i < 100; i++)); do pid_alive "$pid" || break; sleep 0.1; done
            pid_alive "$pid" && die "pid $pid survived SIGKILL"
            break
        fi
        sleep 0.1
    done
    rm -f "$PID_FILE"
    cds_finish "$clean_exit"
    log "stopped broker pid $pid in $(( ($(now_ms) - t0) / 1000 ))s"
    clean_data_dir
}

cmd_status() {
    data_paths
    local pid
    if pid="$(running_pid)"; then
        local ready="not accepting connections"
        port_open "$KAFKA_PORT" && ready="accepting connections"
        printf 'running: pid %s, 127.0.0.1:%s (%s), data dir %s\n' "$pid" "$KAFKA_PORT" "$ready" "$KAFKA_DATA_DIR"
        return 0
    fi
    printf 'not running (data dir %s)\n' "$KAFKA_DATA_DIR"
    return 3
}

case "${1:-}" in
fetch) cmd_fetch; printf '%s\n' "$LIB_DIR" ;;
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
    printf 'usage: %s fetch|up|down|status\n' "$0" >&2
    exit 2
    ;;
esac
