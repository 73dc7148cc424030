# syntax=docker/dockerfile:1
# accessgrant-operator image: a release build on Debian bookworm, run on distroless (glibc, CA
# roots, no shell) as the unprivileged "nonroot" user (65532), which the Helm chart's and the
# kustomize base's securityContext expect (runAsNonRoot, read-only root filesystem).
#   docker build -t accessgrant-operator:0.1.0 --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# The commit in accessgrant_build_info{commit} ("unknown" without it).
ARG GIT_COMMIT=unknown
ENV ACCESSGRANT_GIT_COMMIT=${GIT_COMMIT}
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p accessgrant-operator --bin accessgrant-operator \
 && install -D -m 0755 target/release/accessgrant-operator /out/accessgrant-operator

# Same Debian release (glibc) as the build stage; TLS is rustls, so no OpenSSL is needed.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="accessgrant-operator" \
      org.opencontainers.image.description="Kubernetes operator turning AccessGrant resources into temporary Azure JIT and PIM access" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/accessgrant-operator /usr/local/bin/accessgrant-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/accessgrant-operator"]
CMD ["run"]
