#!/bin/bash
# Re-record the real tool output under tests/data/ that the unit tests parse.
#
#   tests/data/record.sh            on the host: boots a virtme-ng guest (TCG) with five
#                                   QEMU NVMe disks and one SATA disk on AHCI, and a QMP socket
#   tests/data/record.sh --in-guest OUT    inside that guest (started by the line above)
#
# The guest formats its own emulated disks (ext4, a DOS partition table, LUKS2, an md
# member) to capture what udev, blkid and smartctl say about each kind of "foreign data".
# Then it asks the host (marker file) to set smart_critical_warning=4 on one NVMe
# controller through QMP and records smartctl again. Needs `make deps-vm`.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=$REPO/tests/data
MARKER=nvrd.recordguest=1

in_guest() {
    local out=$1
    grep -qwF -- "$MARKER" /proc/cmdline || { echo "not the recording guest" >&2; exit 2; }
    export LANG=C LC_ALL=C
    modprobe -a raid1 dm_mod dm_crypt || true
    udevadm settle
    # Find the disks by serial, never by name.
    declare -A by_serial
    for s in /sys/block/*; do
        local ser=
        [ -r "$s/device/serial" ] && ser=$(tr -d ' ' <"$s/device/serial")
        [ -z "$ser" ] && ser=$(udevadm info --query=property --property=ID_SERIAL_SHORT --value "$s" 2>/dev/null || true)
        [ -n "$ser" ] && by_serial[$ser]=$(basename "$s")
    done
    for k in "${!by_serial[@]}"; do echo "serial $k -> ${by_serial[$k]}"; done
    local blank=${by_serial[REC0000]} ext4=${by_serial[REC0001]} pt=${by_serial[REC0002]}
    local luks=${by_serial[REC0003]} md=${by_serial[REC0004]} sata= s
    for s in /sys/block/sd*; do sata=${s##*/}; break; done   # the one AHCI disk
    mkdir -p "$out/udev" "$out/smart" "$out/blk"

    mkfs.ext4 -q -F -L nvrdrec "/dev/$ext4"
    # A DOS partition table with one Linux partition from 1 MiB to the end.
    python3 - "/dev/$pt" <<'PY'
import os, struct, sys
dev = sys.argv[1]
fd = os.open(dev, os.O_RDWR)
size = os.lseek(fd, 0, os.SEEK_END) // 512
entry = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, size - 2048)
mbr = bytearray(512)
struct.pack_into("<I", mbr, 440, 0x6e767264)
mbr[446:462] = entry
mbr[510:512] = b"\x55\xaa"
os.pwrite(fd, bytes(mbr), 0)
os.fsync(fd)
os.close(fd)
PY
    blockdev --rereadpt "/dev/$pt"
    printf 'recording passphrase' | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 \
        --pbkdf-force-iterations 1000 --key-file=- "/dev/$luks"
    mdadm --create /dev/md/rec --run --metadata=1.2 --level=1 --raid-devices=2 "/dev/$md" missing
    udevadm settle

    for name in "$blank" "$ext4" "$pt" "${pt}p1" "$luks" "$md" "$sata"; do
        local role
        case $name in
            "$blank") role=blank ;; "$ext4") role=ext4 ;; "$pt") role=dos-table ;;
            "${pt}p1") role=partition ;; "$luks") role=luks2 ;; "$md") role=md-member ;;
            *) role=sata ;;
        esac
        udevadm info --query=property "/sys/class/block/$name" >"$out/udev/$role.properties"
        blkid -p -o export "/dev/$name" >"$out/blk/$role.blkid" 2>&1 || true
    done
    lsblk --json --bytes -o NAME,PATH,TYPE,SIZE,MODEL,SERIAL,FSTYPE,PTTYPE,RM >"$out/blk/lsblk.json"
    # The sysfs attributes that nvrd.storage.disks reads, for a fake sysfs tree.
    for name in "$blank" "$ext4" "$pt" "$luks" "$md" "$sata"; do
        local s=/sys/class/block/$name
        {
            echo "name=$name"
            for a in size removable ro dev; do echo "$a=$(cat "$s/$a")"; done
            for a in model serial vendor; do [ -r "$s/device/$a" ] && echo "device/$a=$(cat "$s/device/$a")"; done
            echo "devpath=$(readlink -f "$s")"
        } >"$out/udev/$name.sysfs"
    done

    smart() {   # smart NAME ARGS...: record stdout and the exit status
        local name=$1; shift
        set +e
        smartctl "$@" >"$out/smart/$name" 2>&1
        echo $? >"$out/smart/$name.rc"
        set -e
    }
    local ctl=${blank%n1}
    smart nvme-a.txt -a "/dev/$ctl"
    smart nvme-a.json --json=c -a "/dev/$ctl"
    smart nvme-ns-a-nstandby.json --json=c -a -n standby "/dev/$blank"
    smart nvme-ns-a-nstandby.txt -a -n standby "/dev/$blank"
    smart sata-a.txt -a "/dev/$sata"
    smart sata-a.json --json=c -a "/dev/$sata"
    smart sata-a-nstandby.json --json=c -a -n standby "/dev/$sata"
    # Put the SATA disk to sleep and check that -n standby leaves it alone.
    smart sata-standby-now.txt -s standby,now "/dev/$sata"
    smart sata-standby.json --json=c -a -n standby "/dev/$sata"
    smart sata-standby.txt -a -n standby "/dev/$sata"

    touch "$out/want-critical-warning"
    for _ in $(seq 600); do [ -e "$out/critical-warning-set" ] && break; sleep 0.1; done
    [ -e "$out/critical-warning-set" ] || { echo "host never set the warning" >&2; exit 3; }
    sleep 2
    smart nvme-critical-a.txt -a "/dev/$ctl"
    smart nvme-critical-a.json --json=c -a "/dev/$ctl"
    smart nvme-critical-ns.json --json=c -a -n standby "/dev/$blank"
    touch "$out/done"
}

if [ "${1:-}" = --in-guest ]; then in_guest "$2"; exit; fi

export PATH=$REPO/.venv/bin:$PATH
work=$(mktemp -d /tmp/nvrd-record.XXXXXX)
out=$work/out
mkdir -p "$out"
opts="-qmp unix:$work/qmp.sock,server=on,wait=off -device ahci,id=ahci0"
for i in 0 1 2 3 4; do
    truncate -s 256M "$work/d$i.img"
    opts+=" -drive file=$work/d$i.img,if=none,id=drv$i,format=raw -device nvme,id=nvmectl$i,serial=REC000$i,drive=drv$i"
done
truncate -s 256M "$work/sata.img"
opts+=" -drive file=$work/sata.img,if=none,id=sata0,format=raw -device ide-hd,drive=sata0,bus=ahci0.0"
kernel=$(ls /boot/vmlinuz-*-amd64 | sort -V | tail -1)
vng --run "$kernel" --disable-kvm --memory 1G --cwd "$REPO" --rwdir "$work" --append "$MARKER" \
    --qemu-opts="$opts" --exec "$REPO/tests/data/record.sh --in-guest $out" </dev/null &
vng_pid=$!
for _ in $(seq 3000); do
    [ -e "$out/want-critical-warning" ] && break
    kill -0 $vng_pid 2>/dev/null || break
    sleep 0.2
done
if [ -e "$out/want-critical-warning" ]; then
    /usr/bin/python3 - "$work/qmp.sock" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
def cmd(c, **a):
    f.write(json.dumps({"execute": c, "arguments": a} if a else {"execute": c}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            print(c, r); return r
json.loads(f.readline())  # greeting
cmd("qmp_capabilities")
cmd("qom-set", path="/machine/peripheral/nvmectl0", property="smart_critical_warning", value=4)
PY
    touch "$out/critical-warning-set"
fi
wait $vng_pid
[ -e "$out/done" ] || { echo "recording failed; see $work" >&2; exit 1; }
rm -rf "$DATA/udev" "$DATA/smart" "$DATA/blk"
cp -r "$out/udev" "$out/smart" "$out/blk" "$DATA/"
rm -rf "$work"
echo "recorded into $DATA"
