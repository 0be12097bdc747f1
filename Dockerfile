# syntax=docker/dockerfile:1

# The PulseHub image: the `pulsehub` binary and the built-in plugins.
#
#   docker build -t pulsehub .
#   docker run --rm -p 8080:8080 -v pulsehub-data:/app/data pulsehub
#
# Without PULSEHUB_KAFKA_BROKERS and PULSEHUB_DATABASE_URL it runs embedded
# (every role in one process, profiles under /app/data). docker-compose.yml
# runs it with Kafka, PostgreSQL and Redis, one service per role.

# ---------------------------------------------------------------------------
# Build: the release binary, then the plugins as WebAssembly components.
FROM rust:1.95-bookworm AS build

# The rdkafka crate builds its bundled librdkafka with its configure script and
# make, and links the system zlib. The rust image ships these already; naming
# them keeps the build's needs explicit. Versions follow the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make gcc libc6-dev pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

# `cargo xtask plugins` builds with this target when rustup has it installed.
RUN rustup target add wasm32-unknown-unknown

WORKDIR /src
COPY . .

# The cargo registry and the target folder live in BuildKit cache mounts, so a
# rebuild after a source change downloads nothing and recompiles only the
# crates that changed. Being mounts, they are not in the image: the binary and
# the components are copied out to /out in the same step. Stale components of
# plugins that no longer exist are removed first.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p pulsehub \
    && rm -rf target/plugins \
    && cargo xtask plugins \
    && mkdir -p /out/plugins \
    && cp target/release/pulsehub /out/pulsehub \
    && cp target/plugins/*.wasm target/plugins/*.toml /out/plugins/

# ---------------------------------------------------------------------------
# Runtime: the binary, the plugins, certificates and an unprivileged user.
FROM debian:bookworm-slim

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin pulsehub \
    && mkdir -p /app/data \
    && chown pulsehub:pulsehub /app/data

COPY --from=build /out/pulsehub /app/pulsehub
# Owned by the service user: the plugin folder is watched, and plugins may be
# added to it while PulseHub runs.
COPY --from=build --chown=10001:10001 /out/plugins/ /app/plugins/

# Fails the build when the binary lacks a shared library of this image.
RUN ["/app/pulsehub", "--version"]

WORKDIR /app
ENV PULSEHUB_PLUGIN_DIR=/app/plugins \
    PULSEHUB_HTTP_ADDR=0.0.0.0:8080 \
    PULSEHUB_DATA_DIR=/app/data
USER 10001:10001
EXPOSE 8080

# The image has no HTTP client; bash can open a TCP connection by itself. The
# port follows PULSEHUB_HTTP_ADDR.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "port=${PULSEHUB_HTTP_ADDR##*:}; exec 3<>\"/dev/tcp/127.0.0.1/${port:-8080}\" && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["/app/pulsehub"]
CMD ["run"]
