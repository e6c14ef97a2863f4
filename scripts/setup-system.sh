#!/usr/bin/env bash
# Installs the Debian packages halfclose needs, only those that are missing. Idempotent.
set -euo pipefail

need=()
want() { # want COMMAND-OR-FILE PACKAGE
  if [[ "$1" == /* ]]; then [[ -e "$1" ]] || need+=("$2"); else command -v "$1" >/dev/null 2>&1 || need+=("$2"); fi
}
want ip iproute2
want ss iproute2
want iptables iptables
want ip6tables iptables
want conntrack conntrack
want sysctl procps
want nsenter util-linux
want setpriv util-linux
want haproxy haproxy
want nginx nginx
want /usr/lib/nginx/modules/ngx_stream_module.so libnginx-mod-stream
want socat socat
want iperf3 iperf3
want chromium chromium

if ((${#need[@]} == 0)); then
  echo "setup: system packages present"
  exit 0
fi
mapfile -t pkgs < <(printf '%s\n' "${need[@]}" | sort -u)
echo "setup: installing ${pkgs[*]}"
if [[ $(id -u) != 0 ]]; then
  echo "setup: root is needed to install ${pkgs[*]} (apt-get)" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
# The Debian packages start nothing we need: no nginx or haproxy service should hold ports.
for svc in nginx haproxy; do
  if pgrep -x "$svc" >/dev/null 2>&1 && command -v service >/dev/null; then service "$svc" stop >/dev/null 2>&1 || true; fi
done
echo "setup: done"
