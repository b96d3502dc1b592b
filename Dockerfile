# The image of every Chorus service: one build of the workspace, a binary per service, chosen
# by the container's command (compose.yaml: `command: ["ordering"]`).
#
#   docker build -t chorus:local .
#   docker run --rm chorus:local chorus --help
#
# Three stages build it. `planner` reduces the workspace to a recipe of its manifests and lock
# file (cargo-chef); `builder` compiles the dependencies from the recipe alone, a layer Docker
# keeps until Cargo.toml or Cargo.lock change, and then the workspace itself; the runtime
# stage holds only the binaries, curl for the health checks, and an unprivileged user.

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The dependencies only: cached while the manifests and the lock file are unchanged.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked \
        --bin ordering --bin inventory --bin payments --bin shipping \
        --bin chorus-projections --bin chorus-gateway --bin chorus-notifications --bin chorus

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/chorus --create-home chorus
COPY --from=builder \
    /src/target/release/ordering \
    /src/target/release/inventory \
    /src/target/release/payments \
    /src/target/release/shipping \
    /src/target/release/chorus-projections \
    /src/target/release/chorus-gateway \
    /src/target/release/chorus-notifications \
    /src/target/release/chorus \
    /usr/local/bin/
# Notifications writes its JSON lines here (compose.yaml mounts a volume, which takes this
# directory's owner).
WORKDIR /var/lib/chorus
USER chorus
CMD ["chorus", "--help"]
