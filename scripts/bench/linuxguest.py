"""A Linux guest for side-by-side benchmarks: Debian's kernel and a host
program (nginx, mosquitto, ...) with its shared libraries, booted from an
initramfs this module builds, on the same QEMU machine, CPU, memory and
network setup that `kiln run` uses.

Debian's kernel has virtio-mmio and virtio-net as modules and finds
microvm's devices through ACPI, so the guest runs on `microvm` with ACPI on
(Kiln's guests run with acpi=off; the devices and backends are the same).
Busybox (busybox-static) is the init: it loads the modules, sets the
address given on the kernel command line and execs the program.
"""
import glob, gzip, io, os, shutil, stat, subprocess, tempfile
from pathlib import Path

CACHE = Path(os.environ.get("KILN_BENCH_CACHE", Path.home() / ".cache" / "kiln-bench"))
MODULES = ["virtio_mmio", "virtio_net"]


def _module_order(mods_dir, wanted):
    """The modules `wanted` need, dependencies first (from each module's
    `depends=` entry, as depmod would)."""
    order = []

    def visit(m):
        if m in order:
            return
        path = Path(next(iter(glob.glob(f"{mods_dir}/**/{m}.ko", recursive=True))))
        data = path.read_bytes()
        i = data.find(b"\0depends=")
        deps = data[i + 9:data.index(b"\0", i + 1)].decode().split(",") if i >= 0 else []
        for d in filter(None, deps):
            visit(d)
        order.append(m)
        paths[m] = path

    paths = {}
    for m in wanted:
        visit(m)
    return [(m, paths[m]) for m in order]


def _download(pkg_glob, pkg):
    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob(pkg_glob))
    if not found:
        subprocess.run(["apt-get", "download", pkg], cwd=CACHE, check=True, capture_output=True)
        found = sorted(CACHE.glob(pkg_glob))
    out = CACHE / (found[-1].name + ".d")
    if not out.exists():
        subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(out)], check=True)
    return out


def kernel():
    """Debian's current kernel package, unpacked: (vmlinuz, modules dir, version)."""
    dep = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, check=True).stdout
    pkg = next(l.split(":", 1)[1].strip() for l in dep.splitlines() if "Depends:" in l)
    d = _download(f"{pkg}_*.deb", pkg)
    version = pkg.removeprefix("linux-image-")
    return d / "boot" / f"vmlinuz-{version}", d / "lib" / "modules" / version / "kernel", version


def busybox():
    return _download("busybox-static_*.deb", "busybox-static") / "bin" / "busybox"


def _libs(binary):
    r = subprocess.run(["ldd", binary], capture_output=True, text=True)
    # A static executable ("not a dynamic executable", status 1) needs none.
    out = r.stdout if r.returncode == 0 else ""
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


class Cpio:
    """A newc archive writer (what the Linux kernel unpacks as initramfs)."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1
        self.seen = set()

    def _entry(self, name, mode, data=b""):
        name = name.lstrip("/")
        hdr = "070701" + "".join(f"{v:08x}" for v in [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0])
        self.ino += 1
        self.buf.write(hdr.encode() + name.encode() + b"\0")
        self.buf.write(b"\0" * (-(110 + len(name) + 1) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name):
        parts = Path(name.lstrip("/")).parts
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.seen:
                self.seen.add(p)
                self._entry(p, stat.S_IFDIR | 0o755)

    def file(self, name, data, mode=0o644):
        parent = str(Path(name).parent)
        if parent not in ("/", "."):
            self.dir(parent)
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name, target):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def initramfs(program, args, files, dirs=(), modules=(), pre=""):
    """Builds a gzipped initramfs running `program args` (a host binary)
    after bringing up eth0 with the address in `kiln_ip=` on the kernel
    command line. `files` maps guest paths to bytes; `modules` are more
    kernel modules to load (virtio_blk, vfat, ...) and `pre` shell lines
    run before the program (a mount)."""
    _, mods, _ = kernel()
    c = Cpio()
    c.file("/bin/busybox", busybox().read_bytes(), 0o755)
    order = _module_order(mods, MODULES + list(modules))
    for m, path in order:
        c.file(f"/lib/modules/{m}.ko", path.read_bytes())
    for lib in _libs(program):
        c.file(lib, Path(lib).read_bytes(), 0o755)
    c.file(program, Path(program).read_bytes(), 0o755)
    for d in ["/proc", "/sys", "/dev", "/tmp", *dirs]:
        c.dir(d)
    for name, data in files.items():
        c.file(name, data)
    init = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {' '.join(m for m, _ in order)}; do insmod /lib/modules/$m.ko; done
ip=$(sed -n 's/.*kiln_ip=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
ip link set lo up
ip link set eth0 up
ip addr add ${{ip%%:*}} dev eth0
ip route add default via ${{ip##*:}}
{pre}
echo "linux-guest: ready at $ip"
exec {program} {' '.join(args)}
"""
    c.file("/init", init.encode(), 0o755)
    return gzip.compress(c.finish(), 1)


def start(initrd_path, netdev, accel, memory="64M", extra_cmdline="", console=None, cpu=None, extra=()):
    """Boots the Linux guest in QEMU like `kiln run` boots Kiln: microvm,
    one vCPU, the given -accel and -cpu (pass what `kiln run` chose),
    virtio-net on `netdev` (a -netdev value with id=n0). Returns the QEMU
    process."""
    vmlinuz, _, _ = kernel()
    cpu = cpu or ("host" if accel == "kvm" else "max")
    cmd = [
        "qemu-system-x86_64", "-M", "microvm", "-accel", accel, "-cpu", cpu, "-m", memory,
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}" if console else "null",
        "-kernel", str(vmlinuz), "-initrd", str(initrd_path),
        "-netdev", netdev, "-device", "virtio-net-device,netdev=n0",
        *extra,
        "-append", f"console=ttyS0 quiet panic=-1 {extra_cmdline}",
    ]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
