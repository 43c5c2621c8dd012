# roomcast gateway image.
#
#   docker build -t roomcast .                 # builds from source in the official Rust image
#
# Base images are build arguments so that a machine without registry access can build from
# images it made itself (deploy/ci-compose-test builds a Debian base with debootstrap and
# passes it as both RUST_IMAGE and RUNTIME_IMAGE). When deploy/docker/prebuilt/roomcast
# exists in the build context, that binary is used as it is and no Rust toolchain is needed.
# (No `# syntax=` line on purpose: it would make BuildKit fetch a frontend image.)
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- build ------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN set -eu; \
    mkdir -p /out/usr/local/bin /out/etc/ssl/certs; \
    if [ -x deploy/docker/prebuilt/roomcast ]; then \
        echo "using the prebuilt binary deploy/docker/prebuilt/roomcast"; \
        cp deploy/docker/prebuilt/roomcast /out/usr/local/bin/roomcast; \
        (command -v strip >/dev/null && strip /out/usr/local/bin/roomcast) || true; \
    else \
        locked=""; [ -f Cargo.lock ] && locked=--locked; \
        cargo build --release $locked -p roomcast-gateway; \
        cp target/release/roomcast /out/usr/local/bin/roomcast; \
        (command -v strip >/dev/null && strip /out/usr/local/bin/roomcast) || true; \
    fi; \
    install -m 0755 deploy/docker/entrypoint.sh /out/usr/local/bin/roomcast-entrypoint; \
    install -m 0755 deploy/docker/healthcheck.sh /out/usr/local/bin/roomcast-healthcheck; \
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
        cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/; \
    fi

# ---- runtime ----------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
# Extra Debian packages for the runtime image; empty when the base already has what it needs.
ARG RUNTIME_APT_PACKAGES=""
RUN set -eu; \
    if [ -n "${RUNTIME_APT_PACKAGES}" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${RUNTIME_APT_PACKAGES}; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    (getent group roomcast >/dev/null || groupadd --system --gid 10001 roomcast); \
    (getent passwd roomcast >/dev/null || useradd --system --uid 10001 --gid roomcast \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin roomcast)
COPY --from=build /out/ /

ENV ROOMCAST_LISTEN=0.0.0.0:8080 \
    ROOMCAST_LOG_FORMAT=json \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    CONTAINER_NOFILE=1048576
USER roomcast:roomcast
EXPOSE 8080
# SIGTERM starts the drain: /readyz 503, stop accepting, close 1001, wait --drain-timeout.
# Give the container a stop grace period above the drain timeout (compose: stop_grace_period).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/roomcast-healthcheck", "/healthz"]
ENTRYPOINT ["/usr/local/bin/roomcast-entrypoint"]
CMD []
