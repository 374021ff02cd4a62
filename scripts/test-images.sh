#!/usr/bin/env bash
# Builds the OCI image layouts that davit's image and container tests push to a throw-away registry.
#
#   busybox:1   one layer: /bin/busybox (static) plus a symlink per applet in /bin, PATH set,
#               entrypoint ["/bin/sh", "-c"], cmd ["echo hello from busybox"], workdir /.
#   whiteout:1  busybox layer that also holds /etc/deleted-file and /data/old/{a,b}, then a layer that
#               whites out /etc/deleted-file and makes /data opaque (.wh..wh..opq) with a new /data/new.
#   big:1       busybox plus a layer with ~50 MB of random (incompressible) data at /big/random.bin.
#
# Output: ${DAVIT_IMAGES_DIR:-target/test-images}/<name>/ (an OCI layout, tag "1"). A layout that already
# has its index.json is left alone, so the script is cheap to run again. Needs umoci (as root) and busybox-static.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
images_dir="${DAVIT_IMAGES_DIR:-$repo_root/target/test-images}"
busybox_bin="${BUSYBOX:-/bin/busybox}"
mkdir -p "$images_dir"
images_dir="$(cd "$images_dir" && pwd)"

for tool in umoci "$busybox_bin"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "test-images.sh: $tool is missing (install umoci and busybox-static)" >&2
        exit 1
    fi
done

# Concurrent test processes build once: the others wait here and then find the layouts done.
exec 9>"$images_dir/.lock"
flock 9

work="$(mktemp -d "$images_dir/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Writes a busybox root filesystem into $1.
make_busybox_rootfs() {
    local root="$1"
    mkdir -p "$root"/{bin,etc,root,tmp,proc,sys,dev,var/www}
    chmod 1777 "$root/tmp"
    chmod 0700 "$root/root"
    install -m 0755 "$busybox_bin" "$root/bin/busybox"
    local applet
    for applet in $("$busybox_bin" --list); do
        if [ "$applet" != busybox ]; then
            ln -sf busybox "$root/bin/$applet"
        fi
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    echo 'hello from the busybox image' >"$root/var/www/index.html"
}

# new_image <name>: starts an empty layout at $work/<name> with tag 1 and the shared busybox config.
new_image() {
    local layout="$work/$1"
    umoci init --layout "$layout"
    umoci new --image "$layout:1"
    umoci config --image "$layout:1" --no-history \
        --config.env 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --config.entrypoint /bin/sh --config.entrypoint -c \
        --config.cmd 'echo hello from busybox' \
        --config.workingdir / \
        --config.exposedports 80/tcp \
        --architecture amd64 --os linux
}

# add_layer <name> <dir> [paths...]: tars <paths> (default: everything) of <dir> and adds it verbatim as a
# layer. (umoci insert of files writes tar streams without their end-of-archive blocks, so it is not used.)
add_layer() {
    local name="$1" dir="$2"
    shift 2
    if [ "$#" -eq 0 ]; then set -- .; fi
    tar --numeric-owner --owner=0 --group=0 -C "$dir" -cf "$work/layer.tar" "$@"
    umoci raw add-layer --image "$work/$name:1" "$work/layer.tar"
    rm -f "$work/layer.tar"
}

# finish <name>: garbage-collects the layout and moves it into place.
finish() {
    umoci gc --layout "$work/$1"
    rm -rf "${images_dir:?}/$1"
    mv "$work/$1" "$images_dir/$1"
    echo "test-images.sh: built $images_dir/$1"
}

build_busybox() {
    new_image busybox
    make_busybox_rootfs "$work/busybox-root"
    add_layer busybox "$work/busybox-root"
    finish busybox
}

build_whiteout() {
    new_image whiteout
    local root="$work/whiteout-root" upper="$work/whiteout-upper"
    make_busybox_rootfs "$root"
    echo 'this file is whited out by the next layer' >"$root/etc/deleted-file"
    mkdir -p "$root/data/old"
    echo a >"$root/data/old/a"
    echo b >"$root/data/old/b"
    add_layer whiteout "$root"
    # The upper layer: a whiteout for /etc/deleted-file, /data made opaque (hiding /data/old), and /data/new.
    mkdir -p "$upper/etc" "$upper/data"
    : >"$upper/etc/.wh.deleted-file"
    : >"$upper/data/.wh..wh..opq"
    echo new >"$upper/data/new"
    add_layer whiteout "$upper" etc/.wh.deleted-file data/.wh..wh..opq data/new
    finish whiteout
}

build_big() {
    new_image big
    make_busybox_rootfs "$work/big-root"
    add_layer big "$work/big-root"
    mkdir -p "$work/big-data/big"
    head -c $((50 * 1024 * 1024)) /dev/urandom >"$work/big-data/big/random.bin"
    add_layer big "$work/big-data"
    finish big
}

for name in busybox whiteout big; do
    if [ -f "$images_dir/$name/index.json" ]; then
        continue
    fi
    "build_$name"
done
