# syntax=docker/dockerfile:1
# One image per function, all from this file:
#   docker build --build-arg FUNCTION=gateway -t ghcr.io/gpu-telemetry/gateway:0.1.0 .
# FUNCTION is one of the workspace binaries: streamer, collector, gateway, autoscaler. The image runs
# `<function> run` as a non-root user and listens on $PORT (8080).
# Choose the function with FUNCTION, not with --target: the builder stage compiles FUNCTION only.
# Needs BuildKit (the default builder since Docker 23): it builds only the stages FUNCTION uses.

ARG FUNCTION=gateway
ARG RUST_VERSION=1.95
# Builder and runtime share one Debian release, so the binary links against the glibc it runs on.
ARG DEBIAN_RELEASE=bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
ARG FUNCTION
# etcd-client compiles etcd's protobuf definitions at build time. The Debian release pins the
# protoc version; an exact package pin would break on every point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY shared ./shared
COPY functions ./functions
COPY testdata ./testdata
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p "${FUNCTION}"

# distroless/cc: glibc, libgcc and CA certificates, no shell, no package manager.
FROM ${RUNTIME_IMAGE} AS runtime
LABEL org.opencontainers.image.source="https://github.com/gpu-telemetry/gpu-telemetry" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
ENV PORT=8080 \
    RUST_LOG=info \
    LOG_FORMAT=json
EXPOSE 8080
# No HEALTHCHECK: the image has no shell or HTTP client; Kubernetes probes /healthz and /readyz.

FROM runtime AS streamer
COPY --from=builder /src/target/release/streamer /usr/local/bin/streamer
# The real data set is baked in: at 1.1 MB it does not fit a ConfigMap (1 MiB). Mount another
# file and point STREAMER_CSV at it to stream something else.
COPY testdata/dcgm_metrics_20250718_134233.csv /usr/share/gpu-telemetry/dcgm_metrics.csv
ENV STREAMER_CSV=/usr/share/gpu-telemetry/dcgm_metrics.csv
ENTRYPOINT ["/usr/local/bin/streamer"]
CMD ["run"]

FROM runtime AS collector
COPY --from=builder /src/target/release/collector /usr/local/bin/collector
ENTRYPOINT ["/usr/local/bin/collector"]
CMD ["run"]

FROM runtime AS gateway
COPY --from=builder /src/target/release/gateway /usr/local/bin/gateway
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["run"]

FROM runtime AS autoscaler
COPY --from=builder /src/target/release/autoscaler /usr/local/bin/autoscaler
ENTRYPOINT ["/usr/local/bin/autoscaler"]
CMD ["run"]

FROM ${FUNCTION}
