#!/usr/bin/env bash
# Builds the tiny test guest of the `vm` driver: a Debian kernel, a busybox initramfs and a qcow2 root disk.
#
# Outputs (under ${DAVIT_GUEST_DIR:-target/guest}): `vmlinux` (uncompressed, for a fast direct kernel boot under
# TCG), `initramfs.cpio.gz`, `disk.qcow2` (ext4 holding the same userland; boot it with the same kernel and
# initramfs plus `root=/dev/vda`: the initramfs loads the ext4 and virtio modules and switches root to it).
# Idempotent: does nothing when all outputs exist. Needs apt (only to download the kernel package, which is
# never installed), busybox-static, cpio, gzip, xz-utils, e2fsprogs and qemu-utils. Never needs a root mount.
#
# The guest (`/init`, busybox sh): loads modules, configures eth0 for QEMU user networking (10.0.2.15/24, gateway
# 10.0.2.2), applies a NoCloud seed (a block device labelled CIDATA: `meta-data` local-hostname/instance-id;
# `user-data` `#cloud-config` with `hostname:` and `write_files:`, or a `#!` script), serves /www with httpd on
# port 8080 (cgi-bin: health, counter, uptime, hostname, file?PATH, write?NAME), prints `davit-guest: ready`, and
# powers off on the ACPI power button unless the kernel command line has `davit.ignore_poweroff=1`.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out_dir=${DAVIT_GUEST_DIR:-$repo_root/target/guest}
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
cache_dir=${DAVIT_GUEST_CACHE:-$out_dir/cache}

if [[ -s $out_dir/vmlinux && -s $out_dir/initramfs.cpio.gz && -s $out_dir/disk.qcow2 ]]; then
    echo "guest already built in $out_dir"
    exit 0
fi

for tool in apt-get apt-cache dpkg-deb busybox cpio gzip xz mkfs.ext4 qemu-img; do
    command -v "$tool" >/dev/null || { echo "build-guest: missing $tool" >&2; exit 1; }
done

# ── Kernel: download (never install) the package linux-image-amd64 depends on ────────────────────────────────
mkdir -p "$cache_dir"
kernel_package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ && !found { print $2; found = 1 }')
[[ -n $kernel_package ]] || { echo "build-guest: cannot resolve linux-image-amd64" >&2; exit 1; }
kernel_release=${kernel_package#linux-image-}
if ! compgen -G "$cache_dir/${kernel_package}_*.deb" >/dev/null; then
    # Downloading as root into a directory _apt cannot write: no sandbox user (else apt warns).
    (cd "$cache_dir" && apt-get -q -o APT::Sandbox::User=root download "$kernel_package")
fi
work_dir=$(mktemp -d "$out_dir/build.XXXXXX")
trap 'rm -rf "$work_dir"' EXIT
kernel_root=$work_dir/kernel
dpkg-deb -x "$(compgen -G "$cache_dir/${kernel_package}_*.deb" | head -n1)" "$kernel_root"
# The package ships no modules.dep (its postinst runs depmod): make one.
busybox depmod -b "$kernel_root" "$kernel_release"
modules_dir=$kernel_root/lib/modules/$kernel_release

# extract_vmlinux VMLINUZ OUT: finds a compressed payload in a bzImage (after the kernel's
# scripts/extract-vmlinux) and writes the first one that decompresses to an ELF image.
extract_vmlinux() {
    local image=$1 output=$2 magic decompressor offset
    local -a formats=('\x1f\x8b\x08' 'gzip -dc' '\xfd7zXZ\x00' 'xz -dc' '\x28\xb5\x2f\xfd' 'zstd -dc' 'BZh' 'bzip2 -dc')
    for ((i = 0; i < ${#formats[@]}; i += 2)); do
        magic=${formats[i]} decompressor=${formats[i + 1]}
        command -v "${decompressor%% *}" >/dev/null || continue
        for offset in $(LC_ALL=C grep -abo -P "$magic" "$image" | cut -d: -f1); do
            tail -c "+$((offset + 1))" "$image" | $decompressor >"$output.tmp" 2>/dev/null || true
            if [[ $(head -c 4 "$output.tmp" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; then
                mv "$output.tmp" "$output"
                return 0
            fi
        done
    done
    rm -f "$output.tmp"
    echo "build-guest: no compressed ELF kernel found in $image" >&2
    return 1
}

if [[ ! -s $out_dir/vmlinux ]]; then
    extract_vmlinux "$kernel_root/boot/vmlinuz-$kernel_release" "$out_dir/vmlinux"
fi

# ── Root file system (shared by the initramfs and the disk) ─────────────────────────────────────────────────
root=$work_dir/root
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,mnt,newroot,srv,root,www/cgi-bin,lib/modules,var/log}
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
done
ln -sf ../bin/busybox "$root/sbin/init"

# Modules (dependencies first, from modules.dep), in the order /init insmods them: the base set always, the file
# system set only when the guest has a block device (disk-less boots skip it).
modules_base=(virtio_mmio virtio_pci virtio_net virtio_blk virtio_console button evdev)
modules_fs=(crc32c_generic ext4 nls_cp437 nls_iso8859-1 nls_ascii vfat isofs)
declare -A module_seen=()
module_order=()
add_module() {
    local path=$1 dependency
    [[ -n ${module_seen[$path]:-} ]] && return 0
    module_seen[$path]=1
    for dependency in $(awk -v m="$path:" '$1 == m { $1 = ""; print }' "$modules_dir/modules.dep"); do
        add_module "$dependency"
    done
    module_order+=("$path")
}
# write_module_list FILE MODULE…: appends the modules not listed yet, dependencies first, and copies them.
write_module_list() {
    local list=$1 module path
    shift
    module_order=()
    for module in "$@"; do
        if grep -q "/$module.ko" "$modules_dir/modules.builtin"; then continue; fi
        path=$(awk -v m="/$module.ko:" 'index($1, m) { print substr($1, 1, length($1) - 1); exit }' "$modules_dir/modules.dep")
        [[ -n $path ]] || { echo "build-guest: module $module not in $kernel_package" >&2; exit 1; }
        add_module "$path"
    done
    : >"$list"
    for path in "${module_order[@]}"; do
        cp "$modules_dir/$path" "$root/lib/modules/"
        basename "$path" >>"$list"
    done
}
write_module_list "$root/etc/modules.base" "${modules_base[@]}"
write_module_list "$root/etc/modules.fs" "${modules_fs[@]}"

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
echo davit-guest >"$root/etc/hostname"

cat >"$root/init" <<'EOF'
#!/bin/sh
# davit test guest init (see scripts/build-guest.sh).
export PATH=/bin:/sbin
say() { echo "davit-guest: $*"; }

if [ "$$" = 1 ] && [ ! -e /proc/self ]; then
    mount -t proc proc /proc
    mount -t sysfs sys /sys
    mount -t devtmpfs dev /dev 2>/dev/null
fi
cmdline=$(cat /proc/cmdline)
arg() { for word in $cmdline; do case $word in "$1"=*) echo "${word#*=}"; return 0 ;; esac; done; return 1; }

if [ ! -e /run/.modules-loaded ]; then
    while read -r module; do insmod "/lib/modules/$module" 2>/dev/null; done </etc/modules.base
    if ls /sys/block | grep -q '^vd'; then
        while read -r module; do insmod "/lib/modules/$module" 2>/dev/null; done </etc/modules.fs
    fi
    : >/run/.modules-loaded 2>/dev/null
    say "modules loaded at $(cut -d' ' -f1 /proc/uptime)s"
fi

# Disk boot: the initramfs mounts root= and hands over to the disk's copy of this script.
root_device=$(arg root || true)
if [ -n "$root_device" ] && [ ! -e /etc/davit-rootfs-disk ]; then
    tries=0
    case $root_device in LABEL=*) label=${root_device#LABEL=}; root_device=$(findfs "LABEL=$label" 2>/dev/null || echo "/dev/disk/by-label/$label") ;; esac
    while [ ! -b "$root_device" ] && [ $tries -lt 100 ]; do
        sleep 0.05
        tries=$((tries + 1))
        [ -n "${label:-}" ] && root_device=$(findfs "LABEL=$label" 2>/dev/null || echo "$root_device")
    done
    if mount -t ext4 "$root_device" /newroot; then
        say "switching to root $root_device"
        mount --move /dev /newroot/dev 2>/dev/null || true
        umount /proc /sys 2>/dev/null
        exec switch_root /newroot /init
    fi
    say "cannot mount root $root_device, staying on the initramfs"
fi

mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /tmp /run
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
[ -e /etc/davit-rootfs-disk ] && mount -o remount,rw / 2>/dev/null
hostname -F /etc/hostname

ip link set lo up
tries=0
while ! ip link show eth0 >/dev/null 2>&1 && [ $tries -lt 100 ]; do sleep 0.05; tries=$((tries + 1)); done
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2

# NoCloud seed: a vfat or iso9660 file system labelled CIDATA.
seed=$(findfs LABEL=CIDATA 2>/dev/null || findfs LABEL=cidata 2>/dev/null || true)
if [ -n "$seed" ]; then
    mkdir -p /run/cidata
    if mount -o ro -t vfat "$seed" /run/cidata 2>/dev/null || mount -o ro -t iso9660 "$seed" /run/cidata 2>/dev/null; then
        say "cloud-init seed $seed"
        /bin/cloud-init /run/cidata
    else
        say "cannot mount cloud-init seed $seed"
    fi
fi

say "network and seed done at $(cut -d' ' -f1 /proc/uptime)s"
httpd -p 8080 -h /www
say "ready (hostname $(hostname), uptime $(cut -d' ' -f1 /proc/uptime)s)"

power_button=
for name in /sys/class/input/event*/device/name; do
    [ -e "$name" ] && [ "$(cat "$name")" = "Power Button" ] && power_button=/dev/input/$(basename "$(dirname "$(dirname "$name")")")
done
[ -n "$power_button" ] || say "no ACPI power button found"
while :; do
    if [ -z "$power_button" ]; then sleep 3600; continue; fi
    exec 3<"$power_button"
    # struct input_event on x86_64: 16 bytes time, u16 type, u16 code, s32 value. EV_KEY=1, KEY_POWER=116.
    while event=$(dd bs=24 count=1 <&3 2>/dev/null | od -An -tx1 -v | tr -d ' \n'); do
        case $event in
        ????????????????????????????????01007400*) ;;
        *) continue ;;
        esac
        if [ "$(arg davit.ignore_poweroff)" = 1 ]; then
            say "power-off requested, ignored (davit.ignore_poweroff=1)"
            continue
        fi
        say "power-off requested"
        sync
        [ -e /etc/davit-rootfs-disk ] && mount -o remount,ro / 2>/dev/null
        poweroff -f
    done
done
EOF
chmod 755 "$root/init"

cat >"$root/bin/cloud-init" <<'EOF'
#!/bin/sh
# A tiny NoCloud subset: meta-data local-hostname; user-data #cloud-config (hostname, write_files) or a #! script.
seed=$1
value() { sed -n "s/^$1:[[:space:]]*//p" "$2" | head -n1 | sed "s/^[\"']\(.*\)[\"']\$/\1/"; }
if [ -f "$seed/meta-data" ]; then
    name=$(value local-hostname "$seed/meta-data")
    [ -n "$name" ] && hostname "$name" && echo "$name" >/etc/hostname
    value instance-id "$seed/meta-data" >/run/instance-id
fi
[ -f "$seed/user-data" ] || exit 0
case $(head -n1 "$seed/user-data") in
'#cloud-config'*)
    name=$(value hostname "$seed/user-data")
    [ -n "$name" ] && hostname "$name" && echo "$name" >/etc/hostname
    awk '
        function unquote(s) { if (s ~ /^".*"$/ || s ~ /^\047.*\047$/) return substr(s, 2, length(s) - 2); return s }
        function indent(s) { match(s, /^ */); return RLENGTH }
        function flush() {
            if (path != "") {
                dir = path; sub(/\/[^\/]*$/, "", dir)
                if (dir != "") system("mkdir -p \047" dir "\047")
                printf "%s", content > path; close(path)
                if (mode != "") system("chmod " mode " \047" path "\047")
                print "davit-guest: wrote " path > "/dev/console"
            }
            path = ""; content = ""; mode = ""
        }
        /^write_files:/ { in_files = 1; next }
        in_files && /^[^ \t-]/ { flush(); in_files = 0 }
        !in_files { next }
        in_block {
            if ($0 ~ /^ *$/) { content = content "\n"; next }
            if (indent($0) > key_indent) {
                if (block_indent < 0) block_indent = indent($0)
                content = content substr($0, block_indent + 1) "\n"; next
            }
            in_block = 0
        }
        {
            line = $0
            if (line ~ /^ *- /) { flush(); sub(/- /, "  ", line) }
            key_indent = indent(line)
            sub(/^ */, "", line)
            key = line; sub(/:.*/, "", key)
            val = line; sub(/^[^:]*:[ ]*/, "", val)
            if (key == "path") path = unquote(val)
            else if (key == "permissions") mode = unquote(val)
            else if (key == "content") {
                if (val ~ /^\|/) { in_block = 1; block_indent = -1; content = "" }
                else content = unquote(val)
            }
        }
        END { flush() }
    ' "$seed/user-data"
    ;;
'#!'*)
    cp "$seed/user-data" /run/user-data
    chmod 700 /run/user-data
    echo "davit-guest: running user-data script"
    /run/user-data
    ;;
esac
EOF
chmod 755 "$root/bin/cloud-init"

cat >"$root/www/index.html" <<'EOF'
<!doctype html><title>davit guest</title><p>davit test guest</p>
EOF
cgi() {
    printf '#!/bin/sh\necho "Content-Type: text/plain"\necho\n%s\n' "$2" >"$root/www/cgi-bin/$1"
    chmod 755 "$root/www/cgi-bin/$1"
}
cgi health 'echo ok'
# The counter lives in guest memory (tmpfs): it keeps counting across a live migration only.
cgi counter 'n=$(cat /tmp/counter 2>/dev/null || echo 0); n=$((n + 1)); echo $n >/tmp/counter; echo $n'
cgi uptime 'cut -d" " -f1 /proc/uptime'
cgi hostname 'hostname'
cgi file 'cat "$QUERY_STRING" 2>/dev/null || echo "missing $QUERY_STRING"'
cgi write 'case $QUERY_STRING in *[!A-Za-z0-9._-]*|"") echo bad name; exit 0 ;; esac; echo "$QUERY_STRING" >"/srv/$QUERY_STRING"; sync; echo wrote /srv/$QUERY_STRING'

# ── Outputs ─────────────────────────────────────────────────────────────────────────────────────────────────
if [[ ! -s $out_dir/initramfs.cpio.gz ]]; then
    (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -6 >"$work_dir/initramfs.cpio.gz"
    mv "$work_dir/initramfs.cpio.gz" "$out_dir/initramfs.cpio.gz"
fi
if [[ ! -s $out_dir/disk.qcow2 ]]; then
    : >"$root/etc/davit-rootfs-disk"
    mkfs.ext4 -q -F -L davit-root -E root_owner=0:0 -d "$root" "$work_dir/disk.raw" 64M
    qemu-img convert -f raw -O qcow2 "$work_dir/disk.raw" "$work_dir/disk.qcow2"
    mv "$work_dir/disk.qcow2" "$out_dir/disk.qcow2"
fi
echo "guest built in $out_dir ($kernel_package)"
