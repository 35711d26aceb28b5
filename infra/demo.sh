#!/usr/bin/env bash
# `make demo`: Kafka, the STT emulator (whisper engine), one worker and the analytics app; three
# sessions of synthesized speech streamed concurrently in realtime, rendered live as conversation turns,
# then their final transcripts read back from stt.transcripts, a summary from the analytics app (its
# dashboard URL) and a SQL query over its DuckDB store.
#
# Assumes `make setup` ran (venv, espeak-ng, Kafka jars). On exit it stops, by PID, only what it
# started; a broker that was already running (e.g. from `make kafka-up`) is used and left running.
#
# Sessions: 1 = auto endpoint, 16-bit PCM at espeak's 22.05 kHz; 2 = manual endpoint with a
# `finalize` after each sentence; 3 = auto endpoint, converted by the producer to μ-law at 8 kHz.
#
# Environment:
#   KAFKA_PORT      broker port (default 9092). If 9092 is taken by something that is not this repo's
#                   broker (another Kafka, say), pick a free one: `KAFKA_PORT=19092 make demo`.
#                   The broker also needs KAFKA_PORT+1 (its controller port).
#   EMULATOR_PORT   STT emulator port (default 8080)
#   DEMO_TIMEOUT    seconds to wait for the three sessions to end (default 180)
#   ANALYTICS_PORT  the analytics app's web port (default 6066); its DuckDB file is .cache/demo/analytics.duckdb
#   Logs of the emulator, worker and producers go to .cache/demo/logs/.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

BIN=.venv/bin
KAFKA_PORT="${KAFKA_PORT:-9092}"
export KAFKA_PORT
EMULATOR_PORT="${EMULATOR_PORT:-8080}"
DEMO_TIMEOUT="${DEMO_TIMEOUT:-180}"
ANALYTICS_PORT="${ANALYTICS_PORT:-6066}"
ANALYTICS_URL="http://127.0.0.1:$ANALYTICS_PORT"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
EMULATOR_URL="http://127.0.0.1:$EMULATOR_PORT"
DEMO_DIR=.cache/demo
LOG_DIR="$DEMO_DIR/logs"
# Topics keep earlier runs' sessions; a per-run prefix lets tail pick out this run's.
PREFIX="demo-$(date +%Y%m%d-%H%M%S)-"
TOPICS=(stt.audio stt.turns stt.transcripts)

KAFKA_STARTED=0
EMULATOR_PID=""
WORKER_PID=""
ANALYTICS_PID=""
TAIL_PID=""
PRODUCE_PIDS=()

say() { printf 'demo: %s\n' "$*"; }
die() {
    printf 'demo: error: %s\n' "$*" >&2
    exit 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# kill -0 also succeeds on a zombie (an exited child not yet reaped); that counts as dead.
alive() {
    [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null || return 1
    local state=""
    [[ -r "/proc/$1/stat" ]] && state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
    [[ "$state" != Z ]]
}

# stop PID NAME GRACE_SECONDS: SIGTERM, then SIGKILL after the grace period; reaps the child.
stop() {
    local pid="$1" name="$2" grace="$3" i
    [[ -n "$pid" ]] || return 0
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            say "$name (pid $pid) still running after ${grace}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

show_log() {
    printf -- '---- last lines of %s ----\n' "$1" >&2
    tail -n "${2:-30}" "$1" >&2 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PRODUCE_PIDS[@]}"; do stop "$pid" produce 5; done
    stop "$TAIL_PID" tail 5
    stop "$ANALYTICS_PID" analytics 20
    stop "$WORKER_PID" worker 40
    stop "$EMULATOR_PID" emulator 10
    if ((KAFKA_STARTED)); then bash infra/kafka/kafka.sh down || true; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ -x "$BIN/stt-pipeline" ]] || die "$BIN/stt-pipeline not found: run \`make setup\` first"
command -v espeak-ng >/dev/null 2>&1 || die "espeak-ng not found: run \`make setup\` first"
command -v curl >/dev/null 2>&1 || die "curl not found"
mkdir -p "$LOG_DIR"

say "synthesizing speech into $DEMO_DIR"
"$BIN/python" infra/demo_audio.py synth "$DEMO_DIR"

if bash infra/kafka/kafka.sh status >/dev/null 2>&1; then
    say "using the broker already running on $BOOTSTRAP (it stays running)"
else
    if port_open "$KAFKA_PORT"; then
        die "127.0.0.1:$KAFKA_PORT is in use by something else; choose a free port: KAFKA_PORT=19092 make demo"
    fi
    KAFKA_STARTED=1
    bash infra/kafka/kafka.sh up
fi

if port_open "$EMULATOR_PORT"; then
    die "127.0.0.1:$EMULATOR_PORT is in use; choose a free port: EMULATOR_PORT=18080 make demo"
fi
say "starting the STT emulator (whisper engine) on $EMULATOR_URL"
"$BIN/stt-pipeline" emulator --port "$EMULATOR_PORT" --engine whisper >"$LOG_DIR/emulator.log" 2>&1 &
EMULATOR_PID=$!
for ((i = 0; ; i++)); do
    curl -sf "$EMULATOR_URL/_emulator/health" >/dev/null 2>&1 && break
    if ! alive "$EMULATOR_PID"; then
        show_log "$LOG_DIR/emulator.log"
        die "the emulator exited during start-up"
    fi
    ((i < 1800)) || die "the emulator was not healthy within 180 s (log: $LOG_DIR/emulator.log)"
    sleep 0.1
done

say "starting a worker (log: $LOG_DIR/worker.log)"
KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" STT_BASE_URL="$EMULATOR_URL" CARTESIA_API_KEY=demo-key \
    STT_HTTP_HOST=127.0.0.1 STT_HTTP_PORT="${WORKER_HTTP_PORT:-9400}" \
    "$BIN/stt-pipeline" worker >"$LOG_DIR/worker.log" 2>&1 &
WORKER_PID=$!
if ! "$BIN/python" infra/demo_audio.py wait-topics --bootstrap "$BOOTSTRAP" --timeout 60 "${TOPICS[@]}"; then
    show_log "$LOG_DIR/worker.log"
    die "the worker did not create the topics"
fi
alive "$WORKER_PID" || {
    show_log "$LOG_DIR/worker.log"
    die "the worker exited"
}

if port_open "$ANALYTICS_PORT"; then
    die "127.0.0.1:$ANALYTICS_PORT is in use; choose a free port: ANALYTICS_PORT=16066 make demo"
fi
analytics() {
    KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" STT_ANALYTICS_PORT="$ANALYTICS_PORT" \
        STT_ANALYTICS_DB="$DEMO_DIR/analytics.duckdb" "$BIN/stt-pipeline" --log-level WARNING analytics "$@"
}
say "starting the analytics app (dashboard $ANALYTICS_URL/, log: $LOG_DIR/analytics.log)"
# Started directly, not through the function: `$!` must be the app's own PID, so that cleanup stops it.
KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" STT_ANALYTICS_PORT="$ANALYTICS_PORT" \
    STT_ANALYTICS_DB="$DEMO_DIR/analytics.duckdb" "$BIN/stt-pipeline" --log-level WARNING analytics \
    >"$LOG_DIR/analytics.log" 2>&1 &
ANALYTICS_PID=$!
for ((i = 0; ; i++)); do
    curl -sf "$ANALYTICS_URL/ready" >/dev/null 2>&1 && break
    if ! alive "$ANALYTICS_PID"; then
        show_log "$LOG_DIR/analytics.log"
        die "the analytics app exited during start-up"
    fi
    ((i < 1200)) || die "the analytics app was not ready within 120 s (log: $LOG_DIR/analytics.log)"
    sleep 0.1
done

say "streaming 3 sessions (${PREFIX}1..3) in realtime; turns appear as they are recognized"
echo
"$BIN/stt-pipeline" --log-level WARNING tail --bootstrap "$BOOTSTRAP" --from-beginning \
    --session-prefix "$PREFIX" --until-sessions 3 --timeout "$DEMO_TIMEOUT" &
TAIL_PID=$!

produce() {
    local n="$1"
    shift
    "$BIN/stt-pipeline" --log-level WARNING produce "$DEMO_DIR/session-$n.wav" --session "$PREFIX$n" \
        --bootstrap "$BOOTSTRAP" --quiet "$@" >"$LOG_DIR/produce-$n.log" 2>&1 &
    PRODUCE_PIDS+=($!)
}
produce 1
produce 2 --endpoint manual --finalize-every-turn
produce 3 --encoding pcm_mulaw --sample-rate 8000

failed=0
for n in 1 2 3; do
    if ! wait "${PRODUCE_PIDS[n - 1]}"; then
        failed=1
        show_log "$LOG_DIR/produce-$n.log" 10
    fi
done
PRODUCE_PIDS=()
((failed == 0)) || die "a producer failed"

tail_rc=0
wait "$TAIL_PID" || tail_rc=$?
TAIL_PID=""
if ((tail_rc != 0)); then
    show_log "$LOG_DIR/worker.log" 40
    die "the sessions did not all end within ${DEMO_TIMEOUT}s"
fi

echo
say "final transcripts (stt.transcripts):"
"$BIN/stt-pipeline" --log-level WARNING tail --bootstrap "$BOOTSTRAP" --transcripts --from-beginning \
    --session-prefix "$PREFIX" --until-sessions 3 --sessions-only --plain --timeout 30
echo
say "waiting for the analytics app to have the 3 sessions"
count_sql="SELECT count(*) AS n FROM sessions WHERE session_id LIKE '${PREFIX}%'"
for ((i = 0; ; i++)); do
    [[ "$(analytics query --csv "$count_sql" 2>/dev/null | tail -n 1)" == 3 ]] && break
    ((i < 300)) || die "the analytics app did not store the 3 sessions within 30 s (log: $LOG_DIR/analytics.log)"
    sleep 0.1
done
echo
say "analytics dashboard: $ANALYTICS_URL/ (live while the demo runs)"
analytics summary --minutes 60
echo
sql="SELECT session_id, status, turns, words, round(audio_s, 1) AS audio_s, latency_ms FROM sessions
     WHERE session_id LIKE '${PREFIX}%' ORDER BY session_id"
say "SQL over the DuckDB store: stt-pipeline analytics query \"$(tr -s ' \n' ' ' <<<"$sql")\""
analytics query "$sql"
echo
say "done; shutting down"
