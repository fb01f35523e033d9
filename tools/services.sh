#!/usr/bin/env bash
# Start/stop a real Apache Kafka broker (KRaft, one node) and Google's Pub/Sub emulator
# on 127.0.0.1, in the background, for the demo and the tests.
#   tools/services.sh start   # idempotent; writes .services.env
#   tools/services.sh stop    # stops exactly the pids we started (stop kafka|pubsub: one)
#   tools/services.sh missing # lists the services not running (to stop only what you start)
#   tools/services.sh restart-kafka  # clean stop + start on the same data (chaos tests)
#   tools/services.sh status
#   tools/services.sh fetch   # only resolve Kafka's jars into .cache/kafka-libs
# A KAFKA_BOOTSTRAP_SERVERS / PUBSUB_EMULATOR_HOST already in the environment means
# "use mine": no local broker / emulator is started for it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN="$ROOT/.run"
LIBS="$ROOT/.cache/kafka-libs"
ENV_FILE="$ROOT/.services.env"
EMULATOR=${PUBSUB_EMULATOR_BIN:-/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator}
PROJECT=${GOOGLE_CLOUD_PROJECT:-fmnist-local}

die() { echo "services: $*" >&2; exit 1; }
log() { echo "services: $*" >&2; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {  # first free port from $1 upwards
  local p=$1
  while port_open "$p"; do p=$((p + 1)); done
  echo "$p"
}

fetch_kafka() {
  [ -f "$LIBS/.complete" ] && return 0
  command -v java >/dev/null || die "java not found: install a JDK 17+ (apt-get install openjdk-17-jre-headless)"
  command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven) to fetch Kafka's jars"
  log "resolving Apache Kafka jars with Maven into $LIBS ..."
  rm -rf "$LIBS" && mkdir -p "$LIBS"
  mvn -q -B -f "$ROOT/tools/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIBS" >&2 || die "Maven could not resolve Kafka (see output above)"
  touch "$LIBS/.complete"
}

start_kafka() {
  local dir="$RUN/kafka"
  if alive "$dir/pid" && [ -f "$dir/port" ] && port_open "$(cat "$dir/port")"; then
    log "Kafka already running (pid $(cat "$dir/pid"), port $(cat "$dir/port"))"
    return 0
  fi
  fetch_kafka
  rm -rf "$dir" && mkdir -p "$dir/data"
  local port ctl
  port=$(free_port "${FMNIST_KAFKA_PORT:-9092}")
  ctl=$(free_port $((port + 1)))
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctl
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctl
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
message.max.bytes=2097152
log.flush.interval.messages=9223372036854775807
PROPS
  local cp="$LIBS/*" cluster
  cluster=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  java -cp "$cp" kafka.tools.StorageTool format -t "$cluster" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
    || die "formatting KRaft storage failed: $dir/format.log"
  echo "$port" >"$dir/port"
  launch_kafka
}

launch_kafka() {  # start the broker on the formatted storage in .run/kafka
  local dir="$RUN/kafka"
  nohup java -Xms256m -Xmx${FMNIST_KAFKA_HEAP:-768m} -XX:+UseG1GC -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
    >>"$dir/kafka.log" 2>&1 &
  echo $! >"$dir/pid"
  log "Kafka starting on 127.0.0.1:$(cat "$dir/port") (pid $(cat "$dir/pid"), log $dir/kafka.log)"
}

# Stop the broker (SIGTERM, a clean shutdown) and start it again on the same data:
# the chaos tests use it to prove nothing is lost or double-counted across a broker restart.
cmd_restart_kafka() {
  local dir="$RUN/kafka"
  alive "$dir/pid" || die "no Kafka started by this script is running"
  local pid; pid=$(cat "$dir/pid")
  kill -TERM "$pid"
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && die "Kafka (pid $pid) did not stop within 30 s"
  launch_kafka
  wait_kafka
  log "Kafka restarted on 127.0.0.1:$(cat "$dir/port")"
}

wait_kafka() {
  local port; port=$(cat "$RUN/kafka/port")
  for _ in $(seq 1 120); do
    alive "$RUN/kafka/pid" || die "Kafka exited during start; see $RUN/kafka/kafka.log"
    if port_open "$port"; then
      if ! command -v kcat >/dev/null || kcat -b "127.0.0.1:$port" -L -m 2 >/dev/null 2>&1; then
        return 0
      fi
    fi
    sleep 0.5
  done
  die "Kafka did not answer on 127.0.0.1:$port within 60 s; see $RUN/kafka/kafka.log"
}

start_pubsub() {
  local dir="$RUN/pubsub"
  if alive "$dir/pid" && [ -f "$dir/port" ] && port_open "$(cat "$dir/port")"; then
    log "Pub/Sub emulator already running (pid $(cat "$dir/pid"), port $(cat "$dir/port"))"
    return 0
  fi
  if [ ! -x "$EMULATOR" ] && command -v gcloud >/dev/null; then
    EMULATOR="$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null)/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
  fi
  [ -x "$EMULATOR" ] || die "Pub/Sub emulator not found at $EMULATOR: install it with
  'gcloud components install pubsub-emulator' or 'apt-get install google-cloud-cli-pubsub-emulator',
  or point PUBSUB_EMULATOR_BIN at cloud-pubsub-emulator"
  command -v java >/dev/null || die "java not found: the Pub/Sub emulator needs a JRE 8+"
  rm -rf "$dir" && mkdir -p "$dir"
  local port; port=$(free_port "${FMNIST_PUBSUB_PORT:-8085}")
  echo "$port" >"$dir/port"
  nohup "$EMULATOR" --host=127.0.0.1 --port="$port" >"$dir/emulator.log" 2>&1 &
  echo $! >"$dir/pid"
  log "Pub/Sub emulator starting on 127.0.0.1:$port (pid $(cat "$dir/pid"), log $dir/emulator.log)"
}

wait_pubsub() {
  local port; port=$(cat "$RUN/pubsub/port")
  for _ in $(seq 1 120); do
    alive "$RUN/pubsub/pid" || die "the emulator exited during start; see $RUN/pubsub/emulator.log"
    if curl -sf "http://127.0.0.1:$port/v1/projects/$PROJECT/topics" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "the Pub/Sub emulator did not answer on 127.0.0.1:$port within 60 s; see $RUN/pubsub/emulator.log"
}

cmd_start() {  # $1: all (default), kafka or pubsub
  mkdir -p "$RUN"
  local which=${1:-all} t0=$SECONDS kafka="${KAFKA_BOOTSTRAP_SERVERS:-}" pubsub="${PUBSUB_EMULATOR_HOST:-}"
  local want_kafka=0 want_pubsub=0
  case "$which" in all) want_kafka=1; want_pubsub=1 ;; kafka) want_kafka=1 ;; pubsub) want_pubsub=1 ;;
    *) die "start takes all, kafka or pubsub, not '$which'" ;; esac
  if [ "$want_kafka" = 1 ] && [ -z "$kafka" ]; then start_kafka; fi
  if [ "$want_pubsub" = 1 ] && [ -z "$pubsub" ]; then start_pubsub; fi
  if [ "$want_kafka" = 1 ] && [ -z "$kafka" ]; then wait_kafka; kafka="127.0.0.1:$(cat "$RUN/kafka/port")"; fi
  if [ "$want_pubsub" = 1 ] && [ -z "$pubsub" ]; then wait_pubsub; pubsub="127.0.0.1:$(cat "$RUN/pubsub/port")"; fi
  # Keep a service this call did not ask for in the file if we started it earlier.
  if [ -z "$kafka" ] && alive "$RUN/kafka/pid"; then kafka="127.0.0.1:$(cat "$RUN/kafka/port")"; fi
  if [ -z "$pubsub" ] && alive "$RUN/pubsub/pid"; then pubsub="127.0.0.1:$(cat "$RUN/pubsub/port")"; fi
  {
    echo "# Written by tools/services.sh; source it to reach the local services."
    [ -n "$kafka" ] && echo "export KAFKA_BOOTSTRAP_SERVERS=$kafka"
    [ -n "$pubsub" ] && echo "export PUBSUB_EMULATOR_HOST=$pubsub"
    echo "export GOOGLE_CLOUD_PROJECT=$PROJECT"
  } >"$ENV_FILE"
  log "ready in $((SECONDS - t0)) s: Kafka ${kafka:-not started}, Pub/Sub emulator ${pubsub:-not started} (env in .services.env)"
}

stop_one() {
  local name=$1 pidfile="$RUN/$1/pid"
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    # The emulator's launcher script starts java as a child: stop the whole group we own.
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
    log "stopped $name (pid $pid)"
  fi
  rm -rf "${RUN:?}/$name"
}

cmd_stop() {  # $1: all (default), kafka or pubsub
  case "${1:-all}" in
    all) stop_one kafka; stop_one pubsub; rm -f "$ENV_FILE" ;;
    kafka|pubsub) stop_one "$1" ;;
    *) die "stop takes all, kafka or pubsub, not '$1'" ;;
  esac
}

# Print the services (kafka, pubsub) that are not running: what a start would launch.
cmd_missing() {
  for name in kafka pubsub; do alive "$RUN/$name/pid" || echo "$name"; done
}

cmd_status() {
  for name in kafka pubsub; do
    if alive "$RUN/$name/pid"; then echo "$name: running (pid $(cat "$RUN/$name/pid"), port $(cat "$RUN/$name/port"))"
    else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  fetch) fetch_kafka ;;
  start) cmd_start "${2:-all}" ;;
  stop) cmd_stop "${2:-all}" ;;
  missing) cmd_missing ;;
  restart-kafka) cmd_restart_kafka ;;
  status) cmd_status ;;
  *) echo "usage: $0 fetch|start [all|kafka|pubsub]|stop [all|kafka|pubsub]|status|missing|restart-kafka" >&2; exit 2 ;;
esac
