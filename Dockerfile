# Conveyor's image: one image runs every `conveyor` command (relay, consume, migrate, dlq, ...).
#   docker build -t conveyor .
#   docker run --rm conveyor migrate up --schema app
#   docker run -d -p 50051:50051 conveyor relay --schema app
# BASE_IMAGE: any Debian-like image with python3 (>= 3.11) and its venv module; the default is
# the official slim Python image. docs/deployment.md says how to build, run and probe it.
ARG BASE_IMAGE=python:3.12-slim-bookworm

# Stage 1: the project's wheel and the wheels of everything it needs, pinned by the CI's
# constraints. Only this stage reaches the package index.
FROM ${BASE_IMAGE} AS wheels
WORKDIR /src
COPY .ci/constraints.txt .ci/constraints.txt
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --disable-pip-version-check \
      -c .ci/constraints.txt build
COPY pyproject.toml README.md buf.yaml ./
COPY proto/ proto/
COPY relay/ relay/
COPY consumers/ consumers/
COPY admin/ admin/
COPY migrations/ migrations/
RUN /opt/build/bin/python -m build --wheel --outdir /dist . \
 && /opt/build/bin/pip wheel --no-cache-dir --disable-pip-version-check \
      -c .ci/constraints.txt --wheel-dir /dist /dist/conveyor_events-*.whl \
 && sha256sum /dist/*.whl > /dist/SHA256SUMS

# Stage 2: the runtime. No compiler, no index: the wheels of stage 1 only.
FROM ${BASE_IMAGE}
ARG UID=10001
RUN groupadd --system --gid "${UID}" conveyor \
 && useradd --system --uid "${UID}" --gid "${UID}" --home-dir /var/lib/conveyor --create-home \
      --shell /usr/sbin/nologin conveyor
# The wheels' checksums, copied first: a new wheel changes them, which also tells builders that
# cache a RUN by its text alone (buildah) to run the install below again.
COPY --from=wheels /dist/SHA256SUMS /usr/local/share/conveyor/wheels.sha256
RUN --mount=type=bind,from=wheels,source=/dist,target=/dist \
    sha256sum --check --quiet /usr/local/share/conveyor/wheels.sha256 \
 && python3 -m venv /opt/conveyor \
 && /opt/conveyor/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
      --find-links /dist conveyor-events \
 && /opt/conveyor/bin/conveyor --version
ENV PATH=/opt/conveyor/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONVEYOR_GRPC_ADDR=0.0.0.0:50051 \
    CONVEYOR_TARGET=127.0.0.1:50051
USER ${UID}:${UID}
WORKDIR /var/lib/conveyor
# gRPC health and AdminService (--grpc-addr); 9464 is the usual choice for --metrics-addr.
EXPOSE 50051 9464
# The probe is in the image: `conveyor health` asks grpc.health.v1 for overall readiness at
# $CONVEYOR_TARGET (exit 0 SERVING, 4 NOT_SERVING, 1 unreachable, as grpc_health_probe does);
# Docker wants 0 or 1, so anything else counts as 1.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
  CMD ["/bin/sh", "-c", "conveyor health --timeout 5 >/dev/null || exit 1"]
# Exec form: `conveyor` is PID 1 and gets SIGTERM itself (health goes NOT_SERVING first, then the
# batches in flight finish, exit 0). Logs go to stderr, which the runtime collects.
ENTRYPOINT ["conveyor"]
CMD ["--help"]
