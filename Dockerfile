# syntax=docker/dockerfile:1
# regcred's image: one static binary on distroless "static", running as non-root.
#
#   docker build -t regcred:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REPO:TAG --push .
#
# The binary is linked statically against glibc (+crt-static): the crate uses rustls with
# aws-lc-rs (no OpenSSL), and glibc >= 2.34 resolves names through /etc/hosts and DNS
# without loading NSS modules, so nothing from the build image is needed at run time.
# tests/image.rs runs this file's build RUN (with its ENV) and checks the result is static
# and works; keep the build in that one RUN.
#
# Each platform builds natively (no cross linker), so an arm64 image built on amd64 runs
# the build under emulation: slow, but the same binary a native arm64 build gives.

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked --target "$(uname -m)-unknown-linux-gnu" && \
    install -D "target/$(uname -m)-unknown-linux-gnu/release/regcred" /out/regcred

# Debian 12 CA certificates, /etc/passwd with nonroot (65532), tzdata; no shell, no libc.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/regcred /usr/local/bin/regcred
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/regcred"]
CMD ["run"]
