#!/usr/bin/env bash
# Sets up what the image lane (tests/images/, MVIT_IMAGES=1) needs on a Debian or Ubuntu machine that has
# no Docker engine and reaches no container registry, as CI's machines: podman, its configuration, the
# base images the Dockerfile builds on, and arm64 emulation. Idempotent: a second run changes nothing.
#
#   bash scripts/setup-images.sh            # amd64 and arm64 (arm64 adds about 6 min the first time)
#   bash scripts/setup-images.sh --no-arm64
#
# A machine with a working Docker engine or podman and a registry needs none of this: the lane builds on
# python:3.11-slim there. The recipe and its reasons: docs/deployment.md#building-and-testing-the-images.
set -euo pipefail

arm64=1
for arg in "$@"; do
    case "$arg" in
        --no-arm64) arm64=0 ;;
        *) echo "usage: $0 [--no-arm64]" >&2; exit 2 ;;
    esac
done

say() { echo "setup-images: $*"; }
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else say "needs root (or sudo) for: $*"; exit 1
    fi
}

# ---- the engine ----
packages=(podman buildah runc mmdebstrap uidmap containernetworking-plugins slirp4netns
          fuse-overlayfs conmon catatonit golang-github-containernetworking-plugin-dnsname)
[ "$arm64" -eq 1 ] && packages+=(arch-test binfmt-support)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- its configuration: vfs storage, runc, cgroupfs (crun and overlay fail in these sandboxes), and
# ulimits no higher than the sandbox allows. Files this script did not write are left alone. ----
marker="# written by mobilevitv2-serve scripts/setup-images.sh"
write_config() {  # path, content
    local path="$1" content="$2"
    if [ -e "$path" ] && ! grep -qF "$marker" "$path"; then
        say "leaving $path alone (not written by this script); it should contain:"; echo "$content"
        return
    fi
    if [ "$(cat "$path" 2>/dev/null)" != "$(printf '%s\n%s' "$marker" "$content")" ]; then
        as_root mkdir -p "$(dirname "$path")"
        printf '%s\n%s\n' "$marker" "$content" | as_root tee "$path" >/dev/null
        say "wrote $path"
    fi
}
write_config /etc/containers/storage.conf '[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"'
write_config /etc/containers/containers.conf '[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"'

# ---- arm64 emulation: qemu-user 10 from Debian trixie (bookworm's 7.2 segfaults in `import onnxruntime`),
# fetched with a private apt state (the machine's sources are untouched) and registered with flags PF ----
qemu=/usr/local/libexec/mvit-qemu/qemu-aarch64
if [ "$arm64" -eq 1 ]; then
    if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
        as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if [ ! -x "$qemu" ]; then
        work="$(mktemp -d)"
        mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            > "$work/trixie.sources"
        apt_private=(-o "Dir::Etc::SourceList=$work/trixie.sources" -o Dir::Etc::SourceParts=-
                     -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
                     -o "APT::Architectures::=$(dpkg --print-architecture)")
        apt-get "${apt_private[@]}" -o APT::Sandbox::User=root -qq update
        (cd "$work" && apt-get "${apt_private[@]}" -o APT::Sandbox::User=root -qq download qemu-user)
        dpkg-deb -x "$work"/qemu-user_*.deb "$work/root"
        as_root install -D -m 0755 "$work/root/usr/bin/qemu-aarch64" "$qemu"
        rm -rf "$work"
        say "installed $("$qemu" --version | head -1) at $qemu"
    fi
    registered=/proc/sys/fs/binfmt_misc/qemu-aarch64
    if [ ! -e "$registered" ] || ! grep -q "interpreter $qemu" "$registered"; then
        [ -e "$registered" ] && echo -1 | as_root tee "$registered" >/dev/null
        # The ELF header of an aarch64 executable, and its mask: Debian's binfmt.d/qemu-aarch64.conf.
        echo ":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:$qemu:PF" \
            | as_root tee /proc/sys/fs/binfmt_misc/register >/dev/null
        say "registered $qemu for aarch64 executables"
    fi
fi

# ---- base images: Debian bookworm's Python 3.11 in a venv at /usr/local, the layout of python:3.11-slim
# (made with mmdebstrap from the machine's own apt sources, since no registry can be reached) ----
base_image() {  # arch
    local arch="$1" name="localhost/debian-python:bookworm-$1"
    if podman image exists "$name"; then return; fi
    local work
    work="$(mktemp -d)"
    say "making $name (about 75 s for amd64, 6 min for arm64 under emulation)"
    mmdebstrap --quiet --arch="$arch" --variant=minbase --include=python3,python3-venv,ca-certificates \
        --customize-hook='chroot "$1" python3 -m venv /usr/local' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        bookworm "$work/rootfs.tar"
    podman import --quiet --arch "$arch" \
        --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' "$work/rootfs.tar" "$name" >/dev/null
    rm -rf "$work"
    say "made $name ($(podman image inspect --format '{{.Size}}' "$name") bytes)"
}
base_image amd64
[ "$arm64" -eq 1 ] && base_image arm64

# podman-compose runs docker-compose.yml (tests/images/test_compose.py), into the active Python.
python -m pip show --quiet podman-compose 2>/dev/null || python -m pip install --quiet podman-compose

say "ready: $(podman --version), $(podman-compose --version 2>/dev/null | grep -i compose | head -1), base images $(podman images --format '{{.Repository}}:{{.Tag}}' localhost/debian-python | sort | tr '\n' ' ')"
