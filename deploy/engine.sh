# The Docker engine of the compose demo, and the host networking it must give back.
#
# Sourced by scripts/compose-up, scripts/compose-down and scripts/docker-base. It starts a
# private dockerd by hand (no systemd needed) with its own socket, data and run folders, all
# outside the build context, and closes the way out: `DOCKER-USER -o <default interface> -j
# DROP`, so containers reach this machine only. Before dockerd starts, the host's networking is
# written down (iptables and ip6tables rules, links, addresses, routes, forwarding sysctls,
# mounts); `engine_stop` stops dockerd and then undoes exactly what appeared since — the rules,
# chains and tables dockerd added, its bridges and veths, ip_forward, its netns mounts — and
# compares.
#
#   MESH_DOCKER_STATE   where the engine keeps its data (images and build cache survive
#                       between runs: that is the cache) [/var/lib/asyncmesh-docker]

STATE=${MESH_DOCKER_STATE:-/var/lib/asyncmesh-docker}
RUN="$STATE/run"                        # this run: pid, log, socket, the host as found
export DOCKER_HOST="unix://$RUN/docker.sock"
export COMPOSE_PROJECT_NAME=asyncmesh   # stable names, whatever the checkout's folder is called
DOCKER=/usr/bin/docker                  # Debian's docker.io client
[ -x "$DOCKER" ] || DOCKER=docker
BASE_IMAGE=asyncmesh-base:bookworm

say() { echo "compose: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Root, and the Debian packages: docker.io, docker-compose (v1: `docker compose` is not in
# Debian 12), iptables, debootstrap. Installed when missing, as scripts/env.sh does for its tools.
engine_packages() {
  [ "$(id -u)" = 0 ] || die "must run as root: it starts a Docker engine and changes iptables"
  local need=()
  [ -x /usr/sbin/dockerd ] || need+=(docker.io)
  command -v docker-compose >/dev/null || need+=(docker-compose)
  command -v iptables >/dev/null || need+=(iptables)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v ip >/dev/null || need+=(iproute2)     # the snapshot of the host's networking
  command -v pgrep >/dev/null || need+=(procps)    # and finding the engine's processes
  if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
    say "installing ${need[*]} (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# Whether the dockerd this folder's last run started is alive (checked by name too: a pid in
# a stale file may belong to something else by now).
engine_running() {
  local pid
  pid=$(cat "$RUN/dockerd.bgpid" 2>/dev/null) || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]
}

# The host's networking as one normalized text: equal texts, equal networking. The firewall is
# read with iptables-save and ip6tables-save, which must be installed: without them the rules
# the kernel holds cannot be seen, and a "before" read blind would say "no rules" where there
# were some, and differ from an "after" read with the tools. The text names the tools that read
# it, so a snapshot is only ever equal to one read the same way.
host_snapshot() {
  local tool
  for tool in iptables-save ip6tables-save nft; do
    echo "# read with: $tool $(command -v "$tool" || echo "(not installed)")"
  done
  for tool in iptables ip6tables; do
    command -v "$tool-save" >/dev/null ||
      die "$tool-save is not installed: the firewall cannot be written down (engine_packages)"
    echo "## $tool"
    "$tool-save" 2>/dev/null | { grep -v '^#' || true; } | sed 's/ \[[0-9]*:[0-9]*\]$//'
  done
  if command -v nft >/dev/null; then
    echo "## nft"
    nft list ruleset 2>/dev/null | { grep -v '^#' || true; } |
      sed 's/counter packets [0-9]* bytes [0-9]*/counter/'
  fi
  echo "## links"
  ip -o link show | sed 's/^[0-9]*: //' | awk '{print $1, $2, $3, $4, $5}'
  echo "## addresses"
  ip -o addr show | awk '{print $2, $3, $4}'
  echo "## routes"
  ip -4 route show table all 2>/dev/null || true
  ip -6 route show table all 2>/dev/null || true
  echo "## sysctl"
  sysctl net.ipv4.ip_forward net.ipv6.conf.all.forwarding 2>/dev/null
  sysctl -a 2>/dev/null | grep -E '^net\.ipv4\.conf\.[^.]+\.forwarding|^net\.bridge\.' || true
  echo "## mounts"
  awk '$2 ~ /docker|netns/ {print $2}' /proc/mounts
}

ENGINE_STARTED=0

# Launch dockerd and wait until it answers.
_dockerd() {
  # No default docker0 bridge (compose makes its own network) and no ip_forward: containers on
  # one bridge reach each other and this machine without the host routing anything. A session
  # of its own, so a Ctrl-C in this terminal reaches compose-up's trap, not dockerd.
  setsid dockerd --data-root "$STATE/data" --exec-root "$RUN/exec" --pidfile "$RUN/dockerd.pid" \
      -H "$DOCKER_HOST" --bridge=none --ip-forward=false >>"$RUN/dockerd.log" 2>&1 &
  echo $! >"$RUN/dockerd.bgpid"
  local _
  for _ in $(seq 1 120); do
    "$DOCKER" info >/dev/null 2>&1 && return 0
    engine_running || { tail -20 "$RUN/dockerd.log" >&2; die "dockerd exited (log: $RUN/dockerd.log)"; }
    sleep 0.5
  done
  die "dockerd did not answer within 60 s (log: $RUN/dockerd.log)"
}

# Start dockerd (the host written down first) and close the way out. Sets ENGINE_STARTED=1
# once there is something for engine_stop to undo.
engine_start() {
  mkdir -p "$RUN"
  if engine_running; then
    die "an engine from an earlier run is still up (pid $(cat "$RUN/dockerd.bgpid")): run scripts/compose-down"
  fi
  if [ -f "$RUN/host-before.txt" ]; then
    say "an earlier run did not finish: restoring the host it found first"
    engine_stop || die "the host could not be restored; see $RUN/host-diff.txt"
  fi
  # The host as found, read with the tools that will read it after (installed first when
  # missing): a firewall read without iptables looks empty whatever it holds, and giving back
  # "empty" would delete tables that were there before (nft's, another firewall's).
  engine_packages
  local before
  before=$(host_snapshot) || die "the host's networking could not be written down"
  ENGINE_STARTED=1   # from here on, stopping means restoring what is written down next
  : >"$RUN/dockerd.log"
  echo "$before" >"$RUN/host-before.txt"
  iptables-save >"$RUN/iptables-before.rules" 2>/dev/null
  ip6tables-save >"$RUN/ip6tables-before.rules" 2>/dev/null
  _dockerd
  local egress
  egress=$(ip route show default | awk '{print $5; exit}')
  if [ -n "$egress" ]; then
    # dockerd makes DOCKER-USER (first in FORWARD) with its first network; make it now, so the
    # rule is in place before any container exists.
    iptables -N DOCKER-USER 2>/dev/null || true
    iptables -C FORWARD -j DOCKER-USER 2>/dev/null || iptables -I FORWARD -j DOCKER-USER
    iptables -I DOCKER-USER -o "$egress" -j DROP
    say "engine up (pid $(cat "$RUN/dockerd.bgpid")); containers cannot leave through $egress"
  fi
}

# Delete, table by table, whatever `$1-save` shows now that the saved dump $2 did not have:
# added rules (in reverse), then added chains, then changed policies of built-in chains; a
# table that did not exist before goes too when the iptables backend is nf_tables.
_undo_rules() {
  local tool=$1 saved=$2 family=$3 table rule chain policy now before
  for table in $("$tool-save" 2>/dev/null | awk '/^\*/ {print substr($0, 2)}'); do
    now=$("$tool-save" -t "$table" 2>/dev/null | awk '!/^#/')
    before=$(awk -v t="*$table" '$0 == t {on=1; next} /^COMMIT/ {on=0} on' "$saved")
    comm -13 <(awk '/^-A /' <<<"$before" | sort) <(awk '/^-A /' <<<"$now" | sort) | tac |
      while IFS= read -r rule; do eval "$tool -t $table -D ${rule#-A }"; done
    for chain in $(comm -13 <(awk '/^:/ && $2 == "-" {print substr($1, 2)}' <<<"$before" | sort) \
                            <(awk '/^:/ && $2 == "-" {print substr($1, 2)}' <<<"$now" | sort)); do
      "$tool" -t "$table" -F "$chain"
    done
    for chain in $(comm -13 <(awk '/^:/ && $2 == "-" {print substr($1, 2)}' <<<"$before" | sort) \
                            <(awk '/^:/ && $2 == "-" {print substr($1, 2)}' <<<"$now" | sort)); do
      "$tool" -t "$table" -X "$chain"
    done
    awk '/^:/ && $2 != "-" {print substr($1, 2), $2}' <<<"$before" |
      while read -r chain policy; do "$tool" -t "$table" -P "$chain" "$policy"; done
    if [ -z "$before" ] && "$tool" -V 2>/dev/null | grep -q nf_tables; then
      for chain in $(awk '/^:/ && $2 != "-" {print substr($1, 2)}' <<<"$now"); do
        "$tool" -t "$table" -P "$chain" ACCEPT
      done
      nft delete table "$family" "$table" 2>/dev/null || true
    fi
  done
}

# Stop dockerd (and its containers) and give the host back as it was found. Returns non-zero,
# with the difference in $RUN/host-diff.txt, when something could not be restored.
engine_stop() {
  [ -f "$RUN/host-before.txt" ] || { say "nothing to restore (no engine was started)"; return 0; }
  local pid
  # Containers outlive a dockerd that was killed (their shims keep them running): start it
  # again, so it can stop them.
  if ! engine_running && pgrep -f -- "-address $RUN/exec/containerd/containerd.sock" >/dev/null; then
    say "containers of a dead engine are still running: starting it again to stop them"
    _dockerd
  fi
  if engine_running; then
    pid=$(cat "$RUN/dockerd.bgpid")
    "$DOCKER" ps -aq 2>/dev/null | xargs -r "$DOCKER" rm -f >/dev/null 2>&1 || true
    "$DOCKER" network prune --force >/dev/null 2>&1 || true
    "$DOCKER" volume prune --force >/dev/null 2>&1 || true
    kill "$pid" 2>/dev/null || true
    local _
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      say "dockerd (pid $pid) did not stop within 30 s; killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  # Its containerd, when dockerd was killed before it could stop it.
  pid=$(cat "$RUN/exec/containerd/containerd.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = containerd ]; then
    kill "$pid"
  fi
  _undo_rules iptables "$RUN/iptables-before.rules" ip
  _undo_rules ip6tables "$RUN/ip6tables-before.rules" ip6
  local link
  for link in $(ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}' |
                awk '/^(docker0|br-[0-9a-f]+|veth[0-9a-f]+)$/'); do
    grep -q "^$link[:@]" "$RUN/host-before.txt" || ip link del "$link" 2>/dev/null || true
  done
  local value
  value=$(awk '$1 == "net.ipv4.ip_forward" {print $3}' "$RUN/host-before.txt")
  [ -n "$value" ] && sysctl -qw "net.ipv4.ip_forward=$value"
  value=$(awk '$1 == "net.ipv6.conf.all.forwarding" {print $3}' "$RUN/host-before.txt")
  [ -n "$value" ] && sysctl -qw "net.ipv6.conf.all.forwarding=$value"
  local mount
  for mount in $(awk '$2 ~ /docker|netns/ {print $2}' /proc/mounts | sort -r); do
    grep -qx "$mount" <(sed -n '/^## mounts/,$p' "$RUN/host-before.txt") || umount "$mount" 2>/dev/null || true
  done
  if diff "$RUN/host-before.txt" <(host_snapshot) >"$RUN/host-diff.txt"; then
    rm -f "$RUN/host-before.txt" "$RUN/iptables-before.rules" "$RUN/ip6tables-before.rules" \
          "$RUN/host-diff.txt" "$RUN/dockerd.bgpid"
    say "engine stopped; host networking is as it was found"
  else
    say "engine stopped, but the host differs from how it was found:"
    cat "$RUN/host-diff.txt" >&2
    return 1
  fi
}

# Stop the compose project (removing its containers, network and volumes: the mesh CA and join
# tokens are made anew each time), then the engine.
compose_down() {
  rm -f .mesh/compose/operator.token   # copied out by compose-up; the control plane is going
  if engine_running; then
    docker-compose --ansi never down --volumes --remove-orphans --timeout 5 2>&1 |
      sed 's/^/  /' >&2 || true
  fi
  engine_stop
}
