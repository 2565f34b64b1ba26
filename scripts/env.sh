# Sourced by scripts/demo and scripts/test: the project's own virtual environment in .venv,
# plus the Debian packages their commands talk to, installed when we are root (apt-get):
#
#   MESH_INSTALL=test   scripts/test (the default): every tool a test runs — nghttp2 (h2load,
#                       nghttpd), curl, openssl, HAProxy, Prometheus, iproute2 (ip, ss),
#                       procps (sysctl, pgrep), etcd-server (etcd, for the state store),
#                       chromium and chromium-driver (the dashboard's browser test) — and
#                       what the compose test's engine needs:
#                       docker.io, docker-compose, iptables, debootstrap. Nothing else needs
#                       installing first: this is the whole of what a fresh machine lacks.
#   MESH_INSTALL=run    scripts/demo: what the demo talks to (curl, Prometheus), no test tools;
#                       with MESH_INSTALL_ETCD=1 (scripts/demo --ha) etcd-server too.
#
# Either way python3-venv, when there is no .venv yet and Debian's python3 cannot make one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# command:package, for every command a test (or the demo) runs
if [ "${MESH_INSTALL:-test}" = run ]; then
  tools=(curl:curl prometheus:prometheus)
  [ "${MESH_INSTALL_ETCD:-0}" = 1 ] && tools+=(etcd:etcd-server)
else
  tools=(h2load:nghttp2-client nghttpd:nghttp2-server curl:curl openssl:openssl
         haproxy:haproxy prometheus:prometheus ip:iproute2 ss:iproute2 sysctl:procps
         pgrep:procps dockerd:docker.io docker-compose:docker-compose iptables:iptables
         debootstrap:debootstrap etcd:etcd-server chromium:chromium
         chromedriver:chromium-driver)
fi
need=()
for tool in "${tools[@]}"; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "${tool%%:*}" >/dev/null && continue
  [[ " ${need[*]} " == *" ${tool#*:} "* ]] || need+=("${tool#*:}")
done
# Debian's python3 makes no virtual environment without its ensurepip (python3-venv).
[ -x .venv/bin/python ] || python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} (Debian packages)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing Debian packages: ${need[*]} (apt-get install them)" >&2
  fi
fi

stamp=.venv/.installed
extras='[test]'
if [ "${MESH_INSTALL:-test}" = run ]; then  # scripts/demo: what runs the mesh, no test tools
  extras=''
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then stamp=.venv/.installed-run; fi
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".$extras"
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
