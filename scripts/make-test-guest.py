#!/usr/bin/env python3
"""Builds a tiny bootable test guest from Debian packages, into DIR (default
target/test-guest):

  DIR/vmlinux    the Debian kernel, uncompressed (boots ~3x faster under TCG than vmlinuz)
  DIR/initrd     a busybox initramfs whose /init
                   - loads virtio-net and the ACPI power button (busybox acpid: power-down
                     powers off),
                   - brings eth0 up as QEMU user networking expects (10.0.2.15/24),
                   - keeps a counter in memory, +1 every 100 ms, served by httpd on port 80
                     at /count: it continues across a migration and restarts at 1 on a boot,
                   - serves the kernel's boot id at /boot: the same across a migration or a
                     save and restore, new on every boot,
                   - serves /cgi-bin/poweroff (the guest powers itself off),
                   - prints VIGIL-GUEST-READY on the serial console.

  DIR/stamp      the sha256 of /init, so that a guest built from an older /init is rebuilt

Needs apt-get (packages are downloaded, not installed) and an `apt-get update` done. It does
nothing when DIR already holds a guest built from this /init. With --current it only says
whether it does (exit 0) or not (exit 1).
"""

import glob
import hashlib
import io
import lzma
import os
import shutil
import subprocess
import sys
import tempfile

MODULES = [
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/input/evdev.ko",
    "drivers/acpi/button.ko",
]

INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /www/cgi-bin /etc
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
# Kernels differ in which module needs which: load in passes until all are in.
for pass in 1 2 3 4 5; do
    for m in virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \\
             failover net_failover virtio_net evdev button; do
        [ -e /sys/module/$m ] || insmod /lib/modules/$m.ko 2>/dev/null
    done
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
# busybox acpid runs CONFDIR/ACTION for an event; the power button is PWRF/00000080.
mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\npoweroff -f\n' > /etc/acpi/PWRF/00000080
chmod +x /etc/acpi/PWRF/00000080
echo 'PWRF PWRF/00000080' > /etc/acpid.conf
acpid -c /etc/acpi -a /etc/acpid.conf -l /dev/null
cat > /www/cgi-bin/poweroff <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\npowering off\n'
(sleep 0.2; poweroff -f) >/dev/null 2>&1 </dev/null &
CGI
chmod +x /www/cgi-bin/poweroff
# The counter and the boot id live in this guest's memory: they survive a migration, not a boot.
cat /proc/sys/kernel/random/boot_id > /www/boot
(n=0; while true; do n=$((n+1)); echo $n > /www/count.tmp; mv /www/count.tmp /www/count; sleep 0.1; done) &
httpd -p 80 -h /www
echo VIGIL-GUEST-READY > /dev/ttyS0
while true; do sleep 3600; done
"""


def run(*args, cwd=None):
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def kernel_package():
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], check=True,
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    sys.exit("cannot find the kernel package linux-image-amd64 depends on (apt-get update?)")


def uncompress(bzimage):
    """The ELF vmlinux inside a bzImage (Debian compresses it with xz)."""
    data = open(bzimage, "rb").read()
    at = data.find(b"\xfd7zXZ\x00")
    if at < 0:
        sys.exit(f"{bzimage}: no xz payload found")
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elf = d.decompress(data[at:])
    if not elf.startswith(b"\x7fELF"):
        sys.exit(f"{bzimage}: the payload is not an ELF kernel")
    return elf


def cpio_newc(entries):
    """entries: (name, mode, data or link target); returns an uncompressed newc archive."""
    out = io.BytesIO()
    ino = 1
    for name, mode, data in entries + [("TRAILER!!!", 0, b"")]:
        name_b = name.encode() + b"\x00"
        header = "070701" + "".join(f"{v:08X}" for v in [
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0])
        out.write(header.encode())
        out.write(name_b)
        out.write(b"\x00" * ((4 - (110 + len(name_b)) % 4) % 4))
        out.write(data)
        out.write(b"\x00" * ((4 - len(data) % 4) % 4))
        ino += 1
    return out.getvalue()


def current(dest):
    stamp = os.path.join(dest, "stamp")
    return (os.path.exists(os.path.join(dest, "vmlinux"))
            and os.path.exists(os.path.join(dest, "initrd"))
            and os.path.exists(stamp)
            and open(stamp).read().strip() == hashlib.sha256(INIT.encode()).hexdigest())


def main():
    args = sys.argv[1:]
    check = "--current" in args
    args = [a for a in args if a != "--current"]
    dest = os.path.abspath(args[0] if args else "target/test-guest")
    if check:
        sys.exit(0 if current(dest) else 1)
    if current(dest):
        print(dest)
        return
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # apt's download user must be able to write there
        run("apt-get", "download", "-q", kernel_package(), "busybox-static", cwd=tmp)
        for deb in glob.glob(os.path.join(tmp, "*.deb")):
            run("dpkg-deb", "-x", deb, os.path.join(tmp, "root"))
        root = os.path.join(tmp, "root")
        vmlinuz = glob.glob(os.path.join(root, "boot", "vmlinuz-*"))[0]
        moddir = glob.glob(os.path.join(root, "lib", "modules", "*", "kernel"))[0]
        entries = [
            ("bin", 0o040755, b""),
            ("lib", 0o040755, b""),
            ("lib/modules", 0o040755, b""),
            ("init", 0o100755, INIT.encode()),
            ("bin/busybox", 0o100755, open(os.path.join(root, "bin", "busybox"), "rb").read()),
            ("bin/sh", 0o120777, b"busybox"),
        ]
        for m in MODULES:
            data = open(os.path.join(moddir, m), "rb").read()
            entries.append((f"lib/modules/{os.path.basename(m)}", 0o100644, data))
        with open(os.path.join(tmp, "vmlinux"), "wb") as f:
            f.write(uncompress(vmlinuz))
        with open(os.path.join(tmp, "initrd"), "wb") as f:
            f.write(cpio_newc(entries))
        shutil.move(os.path.join(tmp, "vmlinux"), os.path.join(dest, "vmlinux"))
        shutil.move(os.path.join(tmp, "initrd"), os.path.join(dest, "initrd"))
    with open(os.path.join(dest, "stamp"), "w") as f:
        f.write(hashlib.sha256(INIT.encode()).hexdigest() + "\n")
    print(dest)


if __name__ == "__main__":
    main()
