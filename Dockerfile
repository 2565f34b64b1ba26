# One image for every process of the compose demo: the control plane, the sidecars, the demo
# services and the load generator (docker-compose.yml picks the command). Built FROM the local
# base image that scripts/docker-base makes with debootstrap, since no registry is reachable.
#
# Layers are ordered for the cache: the dependencies are installed before the source is copied,
# so editing code rebuilds in seconds.

# The runtime dependencies from pyproject.toml, as a requirements file: a stage of its own, so
# the pip layer below is rebuilt only when the list changes, not for any edit of pyproject.toml.
FROM asyncmesh-base:bookworm AS requirements
COPY pyproject.toml /
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/pyproject.toml', 'rb'))['project']['dependencies']))" >/requirements.txt

FROM asyncmesh-base:bookworm
ENV PATH=/opt/mesh/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/mesh

# Nothing here needs root. The folders that compose mounts volumes on exist, owned by the mesh
# user, so new volumes take that owner.
RUN useradd --system --uid 10001 --home-dir /mesh --create-home mesh \
 && mkdir -p /mesh/pki /mesh/bootstrap /mesh/sidecar /mesh/proxyless && chown -R mesh:mesh /mesh

WORKDIR /app
# pip trusts the base image's CA store (which has this machine's extra CA certificates).
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN PIP_CERT=/etc/ssl/certs/ca-certificates.crt pip install -q -r /tmp/requirements.txt

# The source (what .dockerignore leaves of the checkout).
COPY . .
RUN python -m compileall -q .

USER mesh
