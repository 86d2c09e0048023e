# syntax=docker/dockerfile:1
# The wxgate image. Build:  docker build -t wxgate:dev .
#
# Stage 1 builds the release binary on Debian 12 (bookworm); stage 2 runs it on distroless/cc
# for Debian 12 (the same glibc, plus CA certificates for rediss://; no shell, no package
# manager) as the non-root user 65532. Nothing is written to the root filesystem: run it with a
# read-only one. Configuration: a TOML file mounted at /etc/wxgate/wxgate.toml (WXGATE_*
# variables override it); secrets from mounted files (secret_file, key_file, password_file) or
# from variables (secret_env, ...).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Optional cargo features of the binary: --build-arg FEATURES=otlp for OTLP span export.
ARG FEATURES=""
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wxgate ${FEATURES:+--features "$FEATURES"} \
    && install -D -m 0755 target/release/wxgate /out/wxgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wxgate /usr/local/bin/wxgate
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/wxgate"]
CMD ["serve", "--config", "/etc/wxgate/wxgate.toml"]
