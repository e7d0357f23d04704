#!/usr/bin/env bash
# A pool warm-up of a data set with more objects than the workers' listing
# cache holds: three workers over a synthetic origin (10 ms a request),
# `ferryctl warm` over their admin ports; prints the warm-up's time and
# the origin LIST requests the pool made. Run it with two builds in turn
# to compare them (the baseline in the same run).
#
#   cargo build --release -p ferry-proxy -p ferry-control-plane
#   bench/scripts/warm-listing.sh target/release/ferry-proxy new 30000 10000
#
# Arguments: PROXY_BIN LABEL OBJECTS LISTING_ENTRIES. Loopback ports
# BASE_PORT (47100) to BASE_PORT+22 must be free.
set -euo pipefail
BIN=$1 LABEL=$2 COUNT=$3 ENTRIES=$4
BASE=${BASE_PORT:-47100}
CTL=${FERRYCTL:-$(dirname "$0")/../../target/release/ferryctl}
dir=$(mktemp -d)
printf 'limits:\n  listing_entries: %s\n' "$ENTRIES" > "$dir/limits.yaml"
origin="synthetic://?count=$COUNT&size=1KiB&dist=fixed&seed=5&latency=10ms"
pids=() admins=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for i in 0 1 2; do
  "$BIN" worker --config "$dir/limits.yaml" --origin "$origin" --bucket data --chunk-size 64KiB \
    --read-ahead 0 --cache-size 1GiB --listen "127.0.0.1:$((BASE + i))" \
    --admin "127.0.0.1:$((BASE + 10 + i))" --inbound "127.0.0.1:$((BASE + 20 + i))" > "$dir/w$i.log" 2>&1 &
  pids+=($!) admins+=(--admin "127.0.0.1:$((BASE + 10 + i))")
done
for i in 0 1 2; do
  for _ in $(seq 100); do curl -sf "127.0.0.1:$((BASE + 10 + i))/ready" > /dev/null && break; sleep 0.1; done
done
start=$(date +%s.%N)
"$CTL" warm data "${admins[@]}" -o json > "$dir/report.json"
end=$(date +%s.%N)
lists=0 each=()
for i in 0 1 2; do
  n=$(curl -s "127.0.0.1:$((BASE + 10 + i))/metrics" | awk '/^origin_requests_total\{.*op="list"/ {s += $2} END {print s + 0}')
  each+=("$n"); lists=$((lists + n))
done
printf '%s: %s objects, listing_entries %s: warm-up %.2f s, origin LIST requests %s (by worker: %s)\n' \
  "$LABEL" "$COUNT" "$ENTRIES" "$(echo "$end - $start" | bc)" "$lists" "${each[*]}"
