"""Driver for bench/nfs-track.sh (run inside its private tmpfs)."""
import os
import signal
import socket
import subprocess
import sys
import time

W, TRACKER, DIRS, FILES = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split()], int(sys.argv[4])
os.environ["BACKUP_LOCK_DIR"] = f"{W}/run"


def make_tree(base, ndirs):
    """ndirs directories: 100 top-level ones, the rest spread below them."""
    os.makedirs(base)
    leaves = []
    per = max(ndirs // 100 - 1, 0)
    for i in range(100):
        top = f"{base}/d{i}"
        os.mkdir(top)
        for j in range(per):
            os.mkdir(f"{top}/s{j}")
            leaves.append(f"{top}/s{j}")
    return leaves or [base]


def hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


class Inotifywait:
    name = "inotifywait"

    def __init__(self, tree, tag):
        self.out = f"{W}/{tag}.inotifywait.out"
        t0 = time.monotonic()
        self.p = subprocess.Popen(
            ["inotifywait", "-m", "-r", "--format", "%w%f",
             "-e", "close_write,create,moved_to,delete", tree],
            stdout=open(self.out, "wb"), stderr=subprocess.PIPE)
        # "Watches established." on stderr once the walk is done.
        for line in self.p.stderr:
            if b"Watches established" in line:
                break
        self.setup = time.monotonic() - t0
        self.rss = hwm_kb(self.p.pid)

    def finish(self):
        # inotifywait has no flush to ask for: wait until its output stops.
        last = -1
        while True:
            size = os.path.getsize(self.out)
            if size == last:
                break
            last = size
            time.sleep(1.0)
        cpu = cpu_s(self.p.pid)
        self.p.terminate()
        self.p.wait()
        with open(self.out, "rb") as f:
            lines = set(f.read().split(b"\n"))
        return cpu, lines, os.path.getsize(self.out), False


class Tracker:
    def __init__(self, tree, tag, backend):
        self.name = f"nfs-track {backend}"
        self.log = f"{W}/{tag}.{backend}.log"
        sock_path = f"{W}/{tag}.{backend}.notify"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(sock_path)
        env = dict(os.environ, NOTIFY_SOCKET=sock_path)
        t0 = time.monotonic()
        self.p = subprocess.Popen(
            [TRACKER, "--watch", tree, "--log", self.log, "--state-dir", f"{W}/{tag}.{backend}.state",
             "--backend", backend, "-q"], env=env, stderr=subprocess.DEVNULL)
        while b"READY=1" not in s.recv(4096):
            pass
        self.setup = time.monotonic() - t0
        self.rss = hwm_kb(self.p.pid)
        self.sock = s  # kept open for the tracker's STOPPING=1
        self.marker = self.log + ".full-sync-needed"
        self.marks_before = self.marker_lines()

    def marker_lines(self):
        try:
            with open(self.marker) as f:
                return len(f.readlines())
        except FileNotFoundError:
            return 0

    def finish(self):
        # SIGTERM drains the queue and flushes before exiting.
        self.p.send_signal(signal.SIGTERM)
        _, status, ru = os.wait4(self.p.pid, 0)
        cpu = ru.ru_utime + ru.ru_stime - self.cpu_before
        with open(self.log, "rb") as f:
            lines = set(f.read().split(b"\n"))
        return cpu, lines, os.path.getsize(self.log), self.marker_lines() > self.marks_before


def fmt_ratio(x, base):
    return f"{x / base:.3f}x" if base > 0 else "n/a"


print(f"nfs-track bench on tmpfs {W} (kernel {os.uname().release})")
print("\n== watch setup (time until ready, peak RSS); ratio = tool / inotifywait")
for n in DIRS:
    tree = f"{W}/setup{n}"
    make_tree(tree, n)
    rows = []
    for mk in (lambda: Inotifywait(tree, f"s{n}"),
               lambda: Tracker(tree, f"s{n}", "inotify"),
               lambda: Tracker(tree, f"s{n}", "fanotify")):
        t = mk()
        rows.append((t.name, t.setup, t.rss))
        t.p.kill()
        t.p.wait()
    base_t, base_r = rows[0][1], rows[0][2]
    print(f"-- {n} directories")
    for name, s, r in rows:
        print(f"   {name:20s} setup {s * 1000:9.1f} ms ({fmt_ratio(s, base_t):>8s})   peak RSS {r / 1024:7.1f} MiB ({fmt_ratio(r, base_r)})")

print(f"\n== burst of {FILES} file creates over {DIRS[0]} directories")
results = []
for kind in ("inotifywait", "inotify", "fanotify"):
    tree = f"{W}/burst-{kind}"
    leaves = make_tree(tree, DIRS[0])
    t = Inotifywait(tree, "b") if kind == "inotifywait" else Tracker(tree, "b", kind)
    t.cpu_before = cpu_s(t.p.pid)
    names = []
    t0 = time.monotonic()
    for i in range(FILES):
        p = f"{leaves[i % len(leaves)]}/f{i}"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x")
        os.close(fd)
        names.append(p.encode())
    burst = time.monotonic() - t0
    cpu, lines, size, marker = t.finish()
    if kind == "inotifywait":
        cpu -= t.cpu_before
    missing = sum(1 for p in names if p not in lines)
    results.append((t.name, missing, marker, cpu, size, burst))
base_cpu, base_size = results[0][3], results[0][4]
for name, missing, marker, cpu, size, burst in results:
    per = cpu / (FILES / 100000)
    print(f"   {name:20s} missing {missing:7d}{' (marker set)' if marker else ''}   "
          f"CPU {per:6.2f} s/100k events ({fmt_ratio(cpu, base_cpu)})   "
          f"log {size / 1e6:7.2f} MB ({fmt_ratio(size, base_size)})   [burst took {burst:.1f} s]")
