# Ferry's image: ferry-proxy and ferry-control-plane, built from this
# workspace. The Helm chart runs it as the control plane, the workers and the
# injected sidecar (its default tag is the chart's appVersion).
#
#   docker build -t ferry:0.1.0 .
#
# Build stage: the Rust toolchain the workspace pins (rust-version 1.95).
# Nothing but gcc is needed for the C in the tree (aws-lc-sys, lz4, zstd).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferry-proxy -p ferry-control-plane \
 && install -D -m 0755 target/release/ferry-proxy /out/ferry-proxy \
 && install -D -m 0755 target/release/ferry-control-plane /out/ferry-control-plane

# Runtime: glibc and CA certificates, no shell, no package manager, and the
# nonroot user (65532) the chart and the injected sidecar run as.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# The front door, the inbound mTLS listener, the proxy's admin port; the
# control plane's API, webhook and admin ports.
EXPOSE 4140 4143 4191 8086 8443 9990
ENTRYPOINT ["ferry-proxy"]
CMD ["--help"]
