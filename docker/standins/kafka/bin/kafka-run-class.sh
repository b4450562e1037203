#!/usr/bin/env bash
# kafka-run-class.sh of the apache/kafka stand-in: runs a main class of the broker jars.
# Tools log warnings to stderr only; the broker (kafka-server-start.sh) logs to the console.
set -Eeuo pipefail
read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xmx256M}"
read -r -a opts <<<"${KAFKA_OPTS:-}"
log4j="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.properties}"
exec java "${heap[@]}" -XX:+UseG1GC -Djava.awt.headless=true "$log4j" "${opts[@]}" -cp '/opt/kafka/libs/*' "$@"
