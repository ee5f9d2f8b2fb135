#!/usr/bin/env bash
# The quickstart in one command on a fresh Debian/Ubuntu machine, as root: installs what the
# build and the demo need (clang and libbpf headers for the eBPF programs, nftables for the
# fallback capture, iproute2 for the namespaces), then builds and runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "the quickstart creates network namespaces and loads eBPF programs: run it as root" >&2
    exit 1
fi
need=()
command -v clang >/dev/null || need+=(clang)
[[ -f /usr/include/bpf/bpf_helpers.h ]] || need+=(libbpf-dev)
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
exec cargo run --release -p mesh-tests --bin quickstart
