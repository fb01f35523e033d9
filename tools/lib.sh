# Sourced by the tools/*.sh scripts: one way to know "what did I start".
#   start_services kafka pubsub   # starts those not already provided or running; remembers them
#   (an EXIT trap stops exactly those, even when the script fails)
# A KAFKA_BOOTSTRAP_SERVERS / PUBSUB_EMULATOR_HOST already in the environment means
# "use mine": nothing is started for it.
STARTED_HERE=""

start_services() {
  local name wanted=""
  for name in "$@"; do
    case "$name" in
      kafka) [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && continue ;;
      pubsub) [ -n "${PUBSUB_EMULATOR_HOST:-}" ] && continue ;;
    esac
    wanted="$wanted $name"
    case " $(tools/services.sh missing | tr '\n' ' ') " in *" $name "*) STARTED_HERE="$STARTED_HERE $name" ;; esac
  done
  trap stop_started_services EXIT
  case "$wanted" in
    *kafka*pubsub*) tools/services.sh start all ;;  # both at once: their start-ups overlap
    *) for name in $wanted; do tools/services.sh start "$name"; done ;;
  esac
  # shellcheck disable=SC1091
  if [ -n "$wanted" ]; then source .services.env; fi
}

stop_started_services() {
  local name
  for name in $STARTED_HERE; do tools/services.sh stop "$name" || true; done
}
