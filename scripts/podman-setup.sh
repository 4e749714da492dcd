#!/usr/bin/env bash
# Podman's Docker-compatible API for the docker driver's tests and the demo (idempotent).
#
#  - /etc/containers/containers.conf: the runc runtime, the cgroupfs cgroup manager, events to a
#    file, and nofile/nproc ulimits no higher than this machine's hard limits (containers here
#    cannot raise them: without explicit values runc fails with "error setting rlimit").
#  - starts `podman system service` on unix:///run/podman/podman.sock in the background unless
#    it answers already. Prints the DOCKER_HOST to use.
# Docker Engine needs none of this: point DOCKER_HOST at it instead.
set -euo pipefail
SOCK=${PODMAN_SOCK:-/run/podman/podman.sock}
CONF=/etc/containers/containers.conf
LOG=${PODMAN_LOG:-/tmp/yurt-podman-service.log}

if ! command -v podman >/dev/null; then
  echo "podman-setup: podman is not installed: apt-get install podman runc" >&2
  exit 1
fi

nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
[ "$nproc" = unlimited ] && nproc=65536
[ "$nofile" -gt 65536 ] && nofile=65536
[ "$nproc" -gt 32768 ] && nproc=32768  # podman itself runs with at most 32768
want=$(cat <<CONFEOF
# written by yurt scripts/podman-setup.sh
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONFEOF
)
mkdir -p /etc/containers
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$want" ]; then
  if [ -f "$CONF" ] && ! grep -q "written by yurt" "$CONF"; then cp "$CONF" "$CONF.yurt-backup"; fi
  printf '%s\n' "$want" > "$CONF"
  restart=1
fi

answers() { curl -sf --max-time 3 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }
if [ -n "${restart:-}" ] && [ -f /run/podman/yurt-service.pid ]; then
  kill "$(cat /run/podman/yurt-service.pid)" 2>/dev/null || true
  sleep 0.5
fi
# a service started from a directory that was removed since (a deleted checkout) answers pings,
# but every container fails: conmon inherits the cwd ("Failed to get working directory")
pidfile=/run/podman/yurt-service.pid
if [ -f "$pidfile" ] && grep -qa "system service" "/proc/$(cat "$pidfile")/cmdline" 2>/dev/null \
   && [ ! -d "$(readlink "/proc/$(cat "$pidfile")/cwd")" ]; then
  kill "$(cat "$pidfile")" 2>/dev/null || true
  for _ in $(seq 1 50); do answers || break; sleep 0.1; done
fi
if ! answers; then
  mkdir -p "$(dirname "$SOCK")"
  rm -f "$SOCK"
  cd /   # the service (and every conmon it starts) keeps this directory as its cwd
  setsid nohup podman system service --time=0 "unix://$SOCK" >>"$LOG" 2>&1 < /dev/null &
  echo $! > /run/podman/yurt-service.pid
  for _ in $(seq 1 100); do answers && break; sleep 0.1; done
  answers || { echo "podman-setup: podman system service did not answer on $SOCK (log: $LOG)" >&2; tail -20 "$LOG" >&2; exit 1; }
fi
echo "unix://$SOCK"
