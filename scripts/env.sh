# Sourced by scripts/demo and scripts/test: the project's own virtual environment in .venv,
# plus the Debian tools the interop tests, benchmarks and the demo talk to (installed when we are
# root): nghttp2 (h2load, nghttpd), curl, openssl, HAProxy, Prometheus.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nghttpd >/dev/null || need+=(nghttp2-server)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v haproxy >/dev/null || need+=(haproxy)
command -v prometheus >/dev/null || need+=(prometheus)
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
