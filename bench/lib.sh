# Sourced by the bench scripts: a work directory ($work) and the processes they start (append each
# pid to $pids), both removed when the script exits, however it exits.
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
