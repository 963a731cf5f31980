# Sourced by scripts that start `gemma serve` in the background and then talk to it.
# start_local_cluster GEMMA [SERVE ARGS...]: starts it, waits (up to 5 minutes) for its "listening on" line, sets
# $serve (its pid), $serve_log and $address (HOST:PORT), and stops the cluster when the script exits.
start_local_cluster() {
  local gemma=$1
  shift
  serve_log=$(mktemp)
  "$gemma" serve "$@" >"$serve_log" &
  serve=$!
  trap 'kill -INT $serve 2>/dev/null; wait $serve 2>/dev/null; rm -f "$serve_log"' EXIT
  for _ in $(seq 3000); do
    grep -q "listening on" "$serve_log" && break
    kill -0 $serve 2>/dev/null || { cat "$serve_log"; exit 1; }
    sleep 0.1
  done
  address=$(grep -o "listening on [0-9.:]*" "$serve_log" | cut -d' ' -f3)
  [[ -n $address ]] || { echo "gemma serve did not start listening" >&2; cat "$serve_log"; exit 1; }
}
