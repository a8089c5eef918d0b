# Portcullis, the gateway and its policy components, for Coolify on Hetzner
# (README, "Deploying on Hetzner with Coolify").
#
#   docker build -t portcullis .
#   docker run -p 8080:8080 portcullis serve --config /opt/portcullis/policies/nutri.toml
#
# Stage 1 builds the host and, through host/build.rs, every component for
# wasm32-wasip2; then `portcullis check` on each platform's config compiles
# the components it names into the component cache, so the gateway starts
# without compiling anything. Stage 2 is a slim Debian with the binary, the
# components, the cache and policies/, run as a non-root user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
# The whole workspace: host/Cargo.toml names its tests and benches by path.
COPY rust-toolchain.toml Cargo.toml Cargo.lock ./
COPY wit ./wit
COPY components ./components
COPY host ./host
COPY tests ./tests
COPY bench ./bench
COPY policies ./policies
RUN cargo build --release --locked -p portcullis
# The precompiled component cache: `check` loads (compiles) every component
# a config names and stores it under PORTCULLIS_CACHE_DIR, keyed by the
# component's SHA-256 and the engine's compatibility hash. A node whose CPU
# differs from the builder's recompiles once at start and stores the result.
RUN mkdir -p /out/cache \
    && for platform in procare nutri prescripcare healthcare-backend; do \
         PORTCULLIS_CACHE_DIR=/out/cache target/release/portcullis check --config policies/$platform.toml || exit 1; \
       done \
    && ls /out/cache/*.cwasm

FROM debian:bookworm-slim AS run
# curl for the HEALTHCHECK; ca-certificates for the TLS part of the gateway.
# Unpinned: bookworm's point releases replace these versions, and a pin
# would break the build rather than make it reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 portcullis \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin portcullis \
    && mkdir -p /var/lib/portcullis/audit /var/cache/portcullis /opt/portcullis \
    && chown portcullis:portcullis /var/lib/portcullis/audit /var/cache/portcullis
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
# Same layout as the repository, so the configs' relative component paths
# (../target/components/wasm32-wasip2/release/*.wasm) resolve unchanged.
COPY --from=build /src/target/components/wasm32-wasip2/release/jwt_auth.wasm /src/target/components/wasm32-wasip2/release/rate_limit.wasm /src/target/components/wasm32-wasip2/release/residency.wasm /src/target/components/wasm32-wasip2/release/security_headers.wasm /src/target/components/wasm32-wasip2/release/webhook_signature.wasm /opt/portcullis/target/components/wasm32-wasip2/release/
COPY --from=build --chown=portcullis:portcullis /out/cache /var/cache/portcullis
COPY policies /opt/portcullis/policies
WORKDIR /opt/portcullis
# Numeric, so a runtime that checks "non-root" without /etc/passwd can.
USER 10001:10001
ENV PORTCULLIS_LOG=info
EXPOSE 8080
VOLUME ["/var/lib/portcullis/audit"]
# Liveness on the admin listener (127.0.0.1:9901 in every platform config).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["curl", "-fsS", "http://127.0.0.1:9901/healthz"]
# The gateway's graceful shutdown: stop accepting, finish what is in flight
# within gateway.shutdown_grace_ms, then exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["portcullis"]
CMD ["serve", "--config", "/opt/portcullis/policies/procare.toml"]
