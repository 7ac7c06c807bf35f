#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""A live migration of a real QEMU that fails or is cancelled.

Runs inside the test VM, in a chroot of the host's root (scripts/vmm/run.sh),
on the kernel under test's /dev/kvm.  It boots guest.elf (scripts/vmm/
guest.c: writes and checks all its memory, forever) in Debian's QEMU and,
through QMP, migrates it to a receiver on a UNIX socket, slowly enough that
dirty logging stays on until KVM has split the guest's huge pages.  Then

  fail:   the receiver is killed (SIGKILL) mid-stream: the migration fails;
  cancel: migrate_cancel;

either way QEMU stops dirty logging with the guest still running, which is
what this series is about;

  retry:  migrate_cancel, then at once a second migration, cancelled too:
          logging starts again on the slots whose collapse is pending,
          which must be dropped (collapse_cancelled), not collapsed; or

  resume: the migration completes (the guest is stopped, the rest sent);
          QEMU keeps logging on while the source is paused, and the
          guest is resumed with "cont", as libvirt does when the
          destination fails to start it: QEMU stops logging inside
          "cont", before the vCPUs run again, so a collapse there is
          added to the guest's downtime.

With --libvirt, libvirt runs QEMU instead (a session libvirtd, as user
nobody) and drives the migration: a live dump (virsh dump --live, QEMU's
migration to a file) into a FIFO read at the same bandwidth, then

  fail:   the reader is killed: the dump fails;
  cancel: virsh domjobabort;

QMP and the checks below work the same (the domain gets the two extra QMP
monitors through <qemu:commandline>).  It measures:

  - QEMU's stop: a second QMP monitor is pinged every few milliseconds;
    QMP runs under QEMU's big lock, so the longest round trip after the
    failure is how long QEMU held that lock, stopping logging included
    (resume: or the time "cont" took, if longer);
  - KVM's collapse: the kvm_mmu_collapse_start/end tracepoints of this VM
    (mode, mmu_lock hold, regions) and its statistics (pages_2m, collapse_*);

and checks, for the kvm.collapse_mode in force (the VM inherits it):

  - sync:     the collapse runs inside the stop (tracepoint, mode sync);
  - deferred: nothing collapsed at the stop (slot pending, huge pages still
              split), the worker does it after collapse_delay_ms;
  - ondemand: nothing collapses by itself (checked for a while), writing
              collapse_now does it;

that pages_2m comes back to what it was before the migration, that the
guest kept running (passes go on after the stop) and that every page held
what the guest wrote (no bad page reported by guest.elf, which checks every
page in every pass, and at least two passes after the collapse).

Prints "# ..." progress, "qemu-result k=v ..." lines (scripts/bench.sh),
exits 0 on success, 1 on failure, 4 (kselftest SKIP) when the VM cannot
give huge pages to the guest at all.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

KSFT_SKIP = 4
# Under TCG, a guest that died of the emulator before any memslot of the
# VM logged dirty pages is booted again, this many tries in all; after
# logging began, anything is a failure (docs/test-bed.md).
TRIES = 3
DEBUGFS = "/sys/kernel/debug"
TRACING = DEBUGFS + "/tracing"
EVENTS = ("kvm_mmu_collapse_start", "kvm_mmu_collapse_end")
# A wait's polls are a fraction of a second apart; a gap this long means
# the test VM itself stood still (under TCG, QEMU 7.2 has run a nested
# guest for up to 300 s without coming back to the test VM's vCPUs, its
# clocks running on: "clocksource: Long readout interval" in its console).
STALL_S = 20
# Under TCG with one thread, QEMU 7.2 has also let one vCPU of the test VM
# run the nested guest for 298 s without taking its own timer interrupts,
# while the other vCPU ran on: the collapse worker, queued on the stuck
# vCPU, waited that long ("Long readout interval" in the console, the
# guest at 21 passes a second).  So under TCG, QEMU runs on the test VM's
# last CPU and the collapse worker (KVM starts it as a thread of QEMU,
# named kvm-collapse, at its first KVM_RUN in a lazy mode) on the others;
# a stuck vCPU then stops QEMU's monitor too, which the waits leave out.
PIN = {"qemu": None, "worker": None}
WORKER = "kvm-collapse"


def log(msg):
    print("# " + msg, flush=True)


class Failed(Exception):
    pass


class GuestReset(Failed):
    """The guest triple-faulted (QEMU paused it instead of resetting)."""


class GuestStalled(Failed):
    """The guest made no progress before any dirty logging started."""


def check(cond, msg):
    if not cond:
        raise Failed(msg)


class QMP:
    """A QMP client on a UNIX socket: commands in turn, events kept."""

    def __init__(self, path, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise Failed("no QMP socket " + path)
                time.sleep(0.1)
        self.file = self.sock.makefile("rw")
        self.events = []
        self._read()  # the greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise Failed("QEMU closed its QMP socket")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.file.write(json.dumps(msg) + "\n")
        self.file.flush()
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
            elif "error" in r:
                raise Failed("QMP %s: %s" % (name, r["error"]["desc"]))
            else:
                return r["return"]


class Pinger(threading.Thread):
    """Times a QMP command every few ms on a monitor of its own."""

    def __init__(self, path, period=0.005):
        super().__init__(daemon=True)
        self.qmp = QMP(path)
        self.period = period
        self.samples = []  # (start, round trip), seconds
        self.stopping = False

    def run(self):
        while not self.stopping:
            t0 = time.monotonic()
            try:
                self.qmp.cmd("query-status")
            except (Failed, OSError):
                return
            self.samples.append((t0, time.monotonic() - t0))
            time.sleep(self.period)

    def longest(self, t0, t1):
        """Longest round trip of a ping that was in flight in [t0, t1]."""
        rtts = [rtt for (s, rtt) in self.samples if s + rtt >= t0 and s <= t1]
        return max(rtts) if rtts else 0.0


DOMAIN = """<domain type='kvm'
        xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>lazy</name>
  <memory unit='MiB'>{mib}</memory>
  <vcpu>1</vcpu>
  <cpu mode='host-passthrough'/>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{guest}</kernel></os>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{qemu}</emulator>
    <serial type='file'><source path='{serial}'/></serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-qmp'/><qemu:arg value='unix:{qmp},server=on,wait=off'/>
    <qemu:arg value='-qmp'/><qemu:arg value='unix:{ping},server=on,wait=off'/>
  </qemu:commandline>
</domain>
"""


class Libvirt:
    """virsh on a session libvirtd of user nobody (root has no session)."""

    def __init__(self, workdir):
        self.home = os.path.join(workdir, "libvirt")
        os.makedirs(os.path.join(self.home, "run"), mode=0o700)
        os.makedirs(os.path.join(self.home, "config", "libvirt"))
        # No seccomp, no cgroups or namespaces in the test kernel.
        with open(os.path.join(self.home, "config", "libvirt",
                               "qemu.conf"), "w") as f:
            f.write("seccomp_sandbox = 0\n")
        subprocess.run(["chown", "-R", "nobody:nogroup", workdir], check=True)
        self.env = dict(os.environ, HOME=self.home,
                        XDG_CONFIG_HOME=os.path.join(self.home, "config"),
                        XDG_CACHE_HOME=os.path.join(self.home, "cache"),
                        XDG_RUNTIME_DIR=os.path.join(self.home, "run"))

    def cmd(self, args):
        return ["setpriv", "--reuid=nobody", "--regid=nogroup",
                "--clear-groups", "virsh", "-q", "-c", "qemu:///session"] + args

    def virsh(self, *args, timeout=300):
        r = subprocess.run(self.cmd(list(args)), env=self.env, timeout=timeout,
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True)
        check(r.returncode == 0, "virsh %s: %s" % (" ".join(args),
                                                   r.stderr.strip()))
        return r.stdout

    def popen(self, *args, **kw):
        return subprocess.Popen(self.cmd(list(args)), env=self.env,
                                stdin=subprocess.DEVNULL, **kw)

    def stop_daemon(self):
        """virsh started libvirtd: stop it before its state is removed."""
        pidfile = os.path.join(self.home, "run", "libvirt", "libvirtd.pid")
        try:
            with open(pidfile) as f:
                pid = int(f.read())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + 30
        while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
            time.sleep(0.1)


class VM:
    """QEMU running guest.elf, its KVM statistics and serial output."""

    def __init__(self, qemu, guest, mem, workdir, libvirt=False):
        self.dir = workdir
        self.serial = os.path.join(workdir, "guest-serial.log")
        qmp = os.path.join(workdir, "qmp.sock")
        ping = os.path.join(workdir, "ping.sock")
        self.stderr = open(os.path.join(workdir, "qemu.log"), "w")
        self.libvirt = Libvirt(workdir) if libvirt else None
        if self.libvirt:
            mib = int(mem[:-1]) << (10 if mem.endswith("G") else 0)
            xml = os.path.join(workdir, "domain.xml")
            with open(xml, "w") as f:
                f.write(DOMAIN.format(mib=mib, guest=guest,
                                      qemu=shutil.which(qemu) or qemu,
                                      serial=self.serial, qmp=qmp, ping=ping))
            os.chmod(guest, 0o644)
            log("virsh create %s (libvirt %s)" %
                (xml, self.libvirt.virsh("version", "--daemon").split()[-1]))
            self.libvirt.virsh("create", xml)
            pidfile = os.path.join(self.libvirt.home, "run", "libvirt", "qemu",
                                   "run", "lazy.pid")
            with open(pidfile) as f:
                self.pid = int(f.read())
            self.proc = None
        else:
            cmd = [qemu, "-accel", "kvm", "-cpu", "host", "-smp", "1",
                   "-m", mem, "-nodefaults", "-display", "none",
                   # A triple fault pauses the guest instead of resetting it.
                   "-action", "reboot=shutdown,shutdown=pause",
                   "-kernel", guest, "-serial", "file:" + self.serial,
                   "-qmp", "unix:%s,server=on,wait=off" % qmp,
                   "-qmp", "unix:%s,server=on,wait=off" % ping]
            log(" ".join(cmd))
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=self.stderr,
                                         stderr=self.stderr)
            self.pid = self.proc.pid
        if PIN["qemu"] is not None:
            for tid in os.listdir("/proc/%d/task" % self.pid):
                os.sched_setaffinity(int(tid), {PIN["qemu"]})
        self.worker = None
        self.qmp = QMP(qmp)
        self.pinger = Pinger(ping)
        self.pinger.start()
        dirs = []
        deadline = time.monotonic() + 30
        while not dirs and time.monotonic() < deadline:
            dirs = glob.glob("%s/kvm/%d-*" % (DEBUGFS, self.pid))
            time.sleep(0.1)
        check(len(dirs) == 1, "no single debugfs dir of QEMU's VM: %s" % dirs)
        self.debugfs = dirs[0]

    def pin_worker(self):
        """Under TCG, move KVM's collapse worker off QEMU's CPU."""
        if PIN["worker"] is None or self.worker:
            return
        for tid in os.listdir("/proc/%d/task" % self.pid):
            try:
                with open("/proc/%d/task/%s/comm" % (self.pid, tid)) as f:
                    if f.read().strip() != WORKER:
                        continue
                os.sched_setaffinity(int(tid), PIN["worker"])
            except OSError:
                continue
            self.worker = int(tid)
            log("TCG: %s (%d) on CPUs %s" %
                (WORKER, self.worker, sorted(PIN["worker"])))

    def alive(self):
        if self.libvirt:
            return os.path.exists("/proc/%d" % self.pid)
        return self.proc.poll() is None

    def stat(self, name):
        with open(os.path.join(self.debugfs, name)) as f:
            return int(f.read().split()[0], 0)

    def knob(self, name):
        with open(os.path.join(self.debugfs, name)) as f:
            return f.read().strip()

    def write_knob(self, name, value):
        with open(os.path.join(self.debugfs, name), "w") as f:
            f.write(value)

    def log_registers(self, brief=False):
        """The guest's registers; brief: where it is (IP, CS, mode) only."""
        regs = self.qmp.cmd("human-monitor-command",
                            **{"command-line": "info registers"})
        for line in regs.splitlines():
            if line and (not brief or
                         re.match(r"(RIP|EIP|CS |CR0|RAX|EAX)=", line)):
                log("registers: " + line)

    def running(self):
        """Fail, with the guest's registers, if it is not running."""
        st = self.qmp.cmd("query-status")
        if st["status"] == "running":
            return
        why = [e["data"] for e in self.qmp.events
               if e["event"] in ("SHUTDOWN", "RESET", "GUEST_PANICKED")]
        self.log_registers()
        err = GuestReset if any(w.get("reason") == "guest-reset"
                                for w in why) else Failed
        raise err("guest %s (%s), at pass %d" %
                  (st["status"], why, self.passes()))

    def guest_output(self):
        with open(self.serial, errors="replace") as f:
            return f.read()

    def passes(self):
        """Passes the guest has done (it reports in its memory)."""
        out = self.qmp.cmd("human-monitor-command",
                           **{"command-line": "xp /5wx 0x500"})
        w = [int(x, 16) for x in out.split() if x.startswith("0x")]
        if w[0] != 0x4c415a59:
            return 0
        check(not w[2], "guest memory corrupted: page %d holds index %d "
              "pass %d at pass %d" % (w[2] - 1, w[3], w[4], w[1] + 1))
        return w[1]

    def wait_passes(self, n, timeout, why):
        deadline = Deadline(timeout, "pass %d %s" % (n, why))
        while self.passes() < n:
            check(self.alive(), "QEMU exited")
            self.running()
            if deadline.passed():
                # Where the guest is: firmware, the payload, or a loop.
                for _ in range(2):
                    self.log_registers(brief=True)
                    time.sleep(1)
                raise Failed("guest did not reach pass %d %s in %d s (at %d)"
                             % (n, why, timeout, self.passes()))
            time.sleep(0.2)

    def migration(self):
        return self.qmp.cmd("query-migrate")

    def quit(self):
        self.pinger.stopping = True
        if self.libvirt:
            try:
                self.libvirt.virsh("destroy", "lazy", timeout=60)
            except (Failed, subprocess.TimeoutExpired) as e:
                log("%s" % e)
            self.libvirt.stop_daemon()
            return
        try:
            self.qmp.cmd("quit")
        except (Failed, OSError):
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Deadline:
    """A timeout that does not count the time the test VM stood still."""

    def __init__(self, timeout, what):
        self.timeout, self.what = timeout, what
        self.last = time.monotonic()
        self.end = self.last + timeout

    def passed(self):
        now = time.monotonic()
        if now - self.last > STALL_S:
            log("the test VM stood still for %.0f s while waiting for %s;"
                " not counted" % (now - self.last, self.what))
            self.end += now - self.last
        self.last = now
        return now >= self.end


def wait_for(cond, timeout, what, period=0.1):
    deadline = Deadline(timeout, what)
    while True:
        v = cond()
        if v:
            return v
        check(not deadline.passed(), "timed out (%d s) waiting for %s"
              % (timeout, what))
        time.sleep(period)


# Reads a FIFO at a given rate (bytes/s): the destination of a live dump.
FIFO_READER = r"""
import sys, time
rate, n, t0 = int(sys.argv[2]), 0, time.monotonic()
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(1 << 16)
        if not b:
            break
        n += len(b)
        time.sleep(max(0, n / rate - (time.monotonic() - t0)))
"""

RECEIVER = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(1)
os.close(1)
c, _ = s.accept()
while c.recv(1 << 20):
    pass
"""


def tracing(on):
    for ev in EVENTS:
        with open("%s/events/kvmmmu/%s/enable" % (TRACING, ev), "w") as f:
            f.write("1" if on else "0")


def collapse_events(pid):
    """(mode, hold_ns, regions) of each collapse of VM pid in the trace."""
    runs, mode = [], None
    with open(TRACING + "/trace") as f:
        for line in f:
            if " vm %d " % pid not in line:
                continue
            w = line.split()
            if "kvm_mmu_collapse_start:" in w:
                mode = w[w.index("mode") + 1]
            elif "kvm_mmu_collapse_end:" in w:
                runs.append((mode, int(w[w.index("hold_ns") + 1]),
                             int(w[w.index("regions") + 1])))
    return runs


def receiver(vm, name):
    """A new receiver of a migration, listening on a UNIX socket."""
    sock = os.path.join(vm.dir, "migrate-%s.sock" % name)
    recv = subprocess.Popen([sys.executable, "-c", RECEIVER, sock])
    wait_for(lambda: os.path.exists(sock), 30, "the receiver's socket")
    recv.sock = sock
    return recv


def migrate(vm, recv):
    """Start a migration to @recv; @recv."""
    vm.qmp.cmd("migrate", uri="unix:" + recv.sock)
    return recv


# What each mode makes of a stop of logging, as data: whether the stop
# leaves a slot pending (None: an unmodified kernel, which says nothing),
# and whether the collapse then waits for collapse_now.
MODES = {
    "sync": {"pending": False, "trigger": False},
    "deferred": {"pending": True, "trigger": False},
    "ondemand": {"pending": True, "trigger": True},
    "upstream": {"pending": None, "trigger": False},
}


class Case:
    """One migration of the scenario, ended by @case, and what it saw."""

    def __init__(self, vm, case, mode):
        self.vm, self.case, self.mode = vm, case, mode
        self.name = "libvirt-" + case if vm.libvirt else case
        self.upstream = mode == "upstream"
        self.expect = MODES[mode]
        self.regions = vm.stat("pages_2m")
        self.runs0 = self.stat("collapse_runs")
        self.regions0 = self.stat("collapse_regions")
        self.job = self.again = self.delay = None
        self.cont_s = 0.0

    def stat(self, name):
        """A collapse statistic of the VM; 0 on an unmodified kernel."""
        return 0 if self.upstream else self.vm.stat(name)

    def short_delay(self):
        """Deferred with a delay so short that it may have collapsed."""
        return (self.mode == "deferred" and
                int(self.vm.knob("collapse_delay_ms")) < 2000)


def start_migration(c, bandwidth):
    vm = c.vm
    if vm.libvirt:
        # libvirt migrates to a file at full speed: the reader sets the pace.
        fifo = os.path.join(vm.dir, "dump-%s.fifo" % c.name)
        os.mkfifo(fifo)
        subprocess.run(["chown", "nobody:nogroup", fifo], check=True)
        c.recv = subprocess.Popen([sys.executable, "-c", FIFO_READER, fifo,
                                   str(bandwidth)])
        c.job = vm.libvirt.popen("dump", "--live", "lazy", fifo,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: vm.migration().get("status") == "active", 60,
                 "virsh dump --live to start QEMU's migration")
    else:
        vm.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": bandwidth})
        c.recv = migrate(vm, receiver(vm, c.name))
    c.t_start = time.monotonic()
    if c.case == "retry":
        # The second migration must start before a deferred collapse is
        # due (collapse_delay_ms after the stop), whatever the machine's
        # speed: its receiver (a Python process) starts now, and the
        # slots stay pending until retry() is done with them.
        c.again = receiver(vm, "retry-again")
        if c.mode == "deferred":
            c.delay = vm.knob("collapse_delay_ms")
            vm.write_knob("collapse_delay_ms", "3600000")


def log_until_split(c, hold):
    """Logging is on: KVM splits the huge pages as QEMU clears the dirty
    log and the guest writes."""
    vm = c.vm

    def split():
        st = vm.migration()
        check(st.get("status") in ("setup", "active"),
              "migration ended early: %s" % st.get("status"))
        vm.running()
        return vm.stat("pages_2m") <= c.regions // 4
    wait_for(split, 300, "KVM to split the huge pages (pages_2m <= %d)" %
             (c.regions // 4), 0.5)
    time.sleep(hold)
    st = vm.migration()
    check(st["status"] == "active", "migration not active: %s" % st["status"])
    c.split_count = vm.stat("pages_2m")
    sent = st.get("ram", {}).get("transferred", 0)
    log("%s: logging for %.1f s, pages_2m %d, %d MiB sent" %
        (c.name, time.monotonic() - c.t_start, c.split_count, sent >> 20))


def complete_paused(c):
    """The migration completes: the guest is stopped and the rest sent, as
    at QEMU's own switchover.  QEMU postpones the logging stop while the
    guest is paused, so nothing may have stopped logging."""
    vm = c.vm
    vm.qmp.cmd("stop")
    vm.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 8 << 30})
    wait_for(lambda: vm.migration()["status"] == "completed", 300,
             "the migration to complete", 0.2)
    st = vm.qmp.cmd("query-status")["status"]
    check(st == "postmigrate", "source %s after the migration" % st)
    check(c.upstream or not vm.stat("collapse_pending_slots") and
          not collapse_events(vm.pid),
          "logging stopped while the source was paused")
    check(vm.stat("pages_2m") <= c.regions // 4,
          "huge pages back on the paused source (%d)" % vm.stat("pages_2m"))
    log("%s: migration completed, source paused, logging still on" % c.name)


# How each case ends the migration; the status QEMU then reports.
def end_fail(c):
    c.recv.send_signal(signal.SIGKILL)
    return "failed"


def end_cancel(c):
    if c.job:
        c.vm.libvirt.virsh("domjobabort", "lazy")
    else:
        c.vm.qmp.cmd("migrate_cancel")
    return "cancelled"


def end_resume(c):
    # The destination failed to start the guest, so the management
    # application (libvirt: a failed Finish) resumes the source: QEMU
    # stops logging inside "cont", before the vCPUs run again, so a
    # collapse there adds to the guest's downtime.
    c.vm.qmp.cmd("cont")
    c.cont_s = time.monotonic() - c.t_stop
    return "completed"


ENDS = {"fail": end_fail, "cancel": end_cancel, "retry": end_cancel,
        "resume": end_resume}


def stop_migration(c):
    vm = c.vm
    c.passes_stop = vm.passes()
    with open(TRACING + "/trace", "w") as f:
        f.write("")
    if c.case == "resume":
        complete_paused(c)
    if not c.upstream:
        tracing(True)
    c.t_stop = time.monotonic()
    want = ENDS[c.case](c)
    c.recv.wait()
    if c.job:
        out = c.job.communicate(timeout=120)[0].strip().replace("\n", " | ")
        log("%s: virsh dump exited %d: %s" % (c.name, c.job.returncode, out))
        check(c.job.returncode != 0, "virsh dump did not fail")
    wait_for(lambda: vm.migration()["status"] == want, 120,
             "migration status %s" % want, 0.05)

    # QEMU's cleanup stops dirty logging after the status changed (and
    # postpones it while the guest is paused): wait until KVM has seen it
    # (a sync run traced, or a slot pending; an unmodified kernel gives no
    # sign), and a little more for the pings that were blocked meanwhile.
    def stopped():
        vm.running()
        return (vm.stat("collapse_pending_slots") or
                collapse_events(vm.pid))
    if not c.upstream:
        wait_for(stopped, 60, "KVM to see logging stop", 0.02)
        vm.pin_worker()
    time.sleep(0.5)
    t_end = time.monotonic()
    c.pending = c.stat("collapse_pending_slots")
    c.after_stop = vm.stat("pages_2m")
    c.held = max(vm.pinger.longest(c.t_stop, t_end), c.cont_s)
    if c.case == "resume":
        log("%s: cont took %.1f ms, the guest paused throughout" %
            (c.name, c.cont_s * 1e3))
    log("%s: migration %s; QEMU held its lock %.1f ms at most; pages_2m %d,"
        " %d slots pending" % (c.name, want, c.held * 1e3, c.after_stop,
                               c.pending))


def check_stop(c):
    """What the mode says of the stop (MODES)."""
    if c.expect["pending"] is False:
        # stopped() saw the runs traced; their mode is checked later.
        check(c.pending == 0, "%s: %d slots pending after the stop" %
              (c.mode, c.pending))
    elif c.expect["pending"]:
        check(c.pending >= 1, "%s: no slot pending after the stop" % c.mode)
        check(c.stat("collapse_runs") == c.runs0 or c.short_delay(),
              "%s: collapsed at the stop" % c.mode)


def trigger(c):
    """ondemand: nothing comes back by itself; then collapse_now."""
    vm = c.vm
    time.sleep(5)
    # (QEMU may still have been stopping logging on a slot when pending
    # was read.)
    check(vm.stat("collapse_runs") == c.runs0 and
          vm.stat("collapse_pending_slots") >= c.pending,
          "%s: collapsed without collapse_now" % c.mode)
    check(vm.stat("pages_2m") <= c.regions // 4,
          "%s: huge pages back without collapse_now (%d)" %
          (c.mode, vm.stat("pages_2m")))
    log("%s: nothing collapsed in 5 s; writing collapse_now" % c.mode)
    vm.write_knob("collapse_now", "1")


def wait_back(c):
    """The huge pages come back (mapped again in place, or refaulted)."""
    vm = c.vm
    t_trigger = time.monotonic()

    def back():
        vm.running()
        return vm.stat("pages_2m") >= c.regions * 9 // 10
    try:
        wait_for(back, 300, "pages_2m back to %d" % (c.regions * 9 // 10),
                 0.2)
    except Failed as e:
        # Whose fault: a collapse that never ran (pending, no runs), or a
        # guest that stopped touching its memory (no new passes), or
        # backing that is no longer huge (collapsed, guest running on).
        if type(e) is Failed and not c.upstream:
            log("%s: at the timeout: pages_2m %d, %d slots pending, %d runs "
                "in this case, %d regions collapsed in the VM's life, guest "
                "passes %d at the stop, %d now; runs traced: %s" %
                (c.name, vm.stat("pages_2m"),
                 vm.stat("collapse_pending_slots"),
                 vm.stat("collapse_runs") - c.runs0,
                 vm.stat("collapse_regions"), c.passes_stop, vm.passes(),
                 collapse_events(vm.pid)))
            log("%s: collapse_cancelled %d; the VM's last trace lines:" %
                (c.name, vm.stat("collapse_cancelled")))
            with open(TRACING + "/trace") as f:
                mine = [ln.rstrip() for ln in f if " vm %d " % vm.pid in ln]
            for ln in mine[-40:]:
                log("trace: " + ln)
        raise
    c.restored = vm.stat("pages_2m")
    c.t_back = time.monotonic() - t_trigger


def check_runs(c):
    """Every run traced in the VM's mode; nothing left pending."""
    c.runs = []
    if not c.upstream:
        tracing(False)
        c.runs = collapse_events(c.vm.pid)
        check(c.runs, "no collapse run traced")
        check(all(m == c.mode for (m, _, _) in c.runs),
              "%s mode, runs traced: %s" % (c.mode, c.runs))
        check(c.vm.stat("collapse_pending_slots") == 0, "slots still pending")
    c.kvm_ns = sum(ns for (_, ns, _) in c.runs)
    c.collapsed = sum(r for (_, _, r) in c.runs)
    log("%s: pages_2m %d again %.1f s after the %s; %d collapse runs, "
        "%d regions, mmu_lock held %.1f ms" %
        (c.name, c.restored, c.t_back,
         "trigger" if c.expect["trigger"] else "stop", len(c.runs),
         c.collapsed, c.kvm_ns / 1e6))


def run_on(c):
    """The guest runs on and every page held what it wrote: two more
    passes check all of its memory after the collapse.  (Until the
    collapse, each first write to a 4 KiB page faults, which under TCG can
    make a pass last longer than the time to the collapse.)"""
    vm = c.vm
    now = vm.passes()
    vm.wait_passes(now + 2, 300, "after the collapse")
    st = vm.qmp.cmd("query-status")
    check(st["status"] == "running", "guest %s" % st["status"])
    print("qemu-result case=%s mode=%s qemu_stop_ms=%.1f kvm_collapse_ms=%.1f "
          "collapse_runs=%d regions=%d pages_2m_before=%d pages_2m_logging=%d "
          "pages_2m_after_stop=%d pages_2m_restored=%d restore_s=%.1f "
          "guest_passes=%d" % (c.name, c.mode, c.held * 1e3, c.kvm_ns / 1e6,
                               len(c.runs), c.collapsed, c.regions,
                               c.split_count, c.after_stop, c.restored,
                               c.t_back, vm.passes()),
          flush=True)


def scenario(vm, case, mode, bandwidth, hold):
    """One migration, ended by @case, and the collapse that follows."""
    c = Case(vm, case, mode)
    log("%s: pages_2m %d before the migration" % (c.name, c.regions))
    start_migration(c, bandwidth)
    log_until_split(c, hold)
    stop_migration(c)
    check_stop(c)
    if case == "retry":
        c.pending = retry(vm, mode, c.again, c.regions0, c.t_stop)
        if c.delay is not None:
            # Due again collapse_delay_ms after the second stop.
            vm.write_knob("collapse_delay_ms", c.delay)
    if c.expect["trigger"]:
        trigger(c)
    wait_back(c)
    check_runs(c)
    run_on(c)


def retry(vm, mode, recv, regions0, t_stop):
    """Migrate again at once after a cancel (to @recv), and cancel that too.

    Logging starts again on every slot, so what was pending for them is
    dropped (counted as cancelled) instead of being collapsed and split
    again; in sync mode the collapse already ran in the stop and was
    wasted.  Returns the slots pending after the second cancel.
    """
    upstream = mode == "upstream"
    pending = 0 if upstream else vm.stat("collapse_pending_slots")
    cancelled0 = 0 if upstream else vm.stat("collapse_cancelled")
    runs1 = 0 if upstream else vm.stat("collapse_runs")
    wasted = 0 if upstream else vm.stat("collapse_regions") - regions0
    migrate(vm, recv)
    t_again = time.monotonic() - t_stop
    wait_for(lambda: vm.migration().get("status") == "active", 60,
             "the second migration to start", 0.05)
    if upstream:
        dropped = 0
    else:
        wait_for(lambda: not vm.stat("collapse_pending_slots"), 60,
                 "logging to start again on the pending slots", 0.05)
        dropped = vm.stat("collapse_cancelled") - cancelled0
    log("retry: migrated again %.1f s after the stop; %d pending slots "
        "cancelled, %d regions collapsed between the two migrations" %
        (t_again, dropped, wasted))
    if mode in ("deferred", "ondemand"):
        check(dropped == pending, "%s: %d slots were pending, %d cancelled"
              % (mode, pending, dropped))
        check(vm.stat("collapse_runs") == runs1 and not wasted or
              mode == "deferred" and
              int(vm.knob("collapse_delay_ms")) < 2000,
              "%s: collapsed before the retry" % mode)
    elif mode == "sync":
        check(wasted > 0, "sync: nothing collapsed at the first stop")
    time.sleep(1)
    vm.qmp.cmd("migrate_cancel")
    recv.wait()
    wait_for(lambda: vm.migration()["status"] == "cancelled", 120,
             "the second migration to be cancelled", 0.05)
    if upstream:
        return 0
    if mode != "sync":
        # The slots that logged are those that were pending before.
        wait_for(lambda: vm.stat("collapse_pending_slots") >= pending, 60,
                 "KVM to see logging stop again on %d slots" % pending,
                 0.02)
    pending = vm.stat("collapse_pending_slots")
    log("retry: cancelled again; %d slots pending" % pending)
    return pending


def start(args, mode):
    """Boot the guest; None if it gets no huge pages (SKIP)."""
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    vm = VM(args.qemu, args.guest, args.mem, args.workdir, args.libvirt)
    if mode != "upstream":
        # The debugfs file reads "[sync] deferred ondemand".
        vmode = vm.knob("collapse_mode")
        check("[%s]" % mode in vmode.split(),
              "VM's collapse_mode %s, kvm.collapse_mode %s" % (vmode, mode))
        log("mode %s, collapse_delay_ms %s, collapse_batch %s" %
            (mode, vm.knob("collapse_delay_ms"), vm.knob("collapse_batch")))
    try:
        vm.wait_passes(2, 120, "before the migration")
    except Failed as e:
        # No slot of this VM has logged dirty pages yet: nothing of the
        # collapse can have run.  Under TCG, the guest now and then gets
        # nowhere from the start; main() tries again.  This VM goes first.
        stalled = not isinstance(e, GuestReset) and vm.alive()
        stop(vm, args.workdir)
        if stalled:
            raise GuestStalled(str(e)) from e
        raise
    log("guest at pass %d, pages_2m %d" % (vm.passes(), vm.stat("pages_2m")))
    if vm.stat("pages_2m") < 16:
        log("SKIP: the guest got %d huge pages" % vm.stat("pages_2m"))
        stop(vm, args.workdir)
        return None
    return vm


def control(vm, seconds):
    """The guest alone, no migration: how many passes, intact."""
    t0, p0 = time.monotonic(), vm.passes()
    while time.monotonic() - t0 < seconds:
        vm.running()
        time.sleep(0.5)
    log("control: %d passes in %.0f s, no migration" %
        (vm.passes() - p0, seconds))
    return 0


def stop(vm, workdir):
    if not vm:
        return
    vm.quit()
    with open(os.path.join(workdir, "qemu.log")) as f:
        for line in f:
            log("qemu: " + line.rstrip())


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cases", nargs="*", metavar="fail|cancel|retry|resume",
                   help="what ends the migration, in turn (default: fail "
                   "cancel)")
    p.add_argument("-m", "--mem", default="1G", help="guest memory")
    p.add_argument("-b", "--bandwidth", type=int, default=64 << 20,
                   help="migration bandwidth, bytes/s")
    p.add_argument("--hold", type=float, default=2.0,
                   help="seconds of logging after the split")
    p.add_argument("--control", type=float, default=0,
                   help="only run the guest this many seconds, no migration")
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--guest", default=os.path.join(here, "guest.elf"))
    p.add_argument("--workdir", default="/tmp/vmm",
                   help="scratch directory, emptied first")
    p.add_argument("--libvirt", action="store_true",
                   help="libvirt runs QEMU and the migration (a live dump)")
    args = p.parse_args()
    args.cases = args.cases or ["fail", "cancel"]
    for c in args.cases:
        if c not in ("fail", "cancel", "retry", "resume"):
            p.error("unknown case %r: fail, cancel, retry or resume" % c)
        if c in ("retry", "resume") and args.libvirt:
            p.error("%s: QEMU's monitor drives it, not libvirt" % c)

    try:
        with open("/sys/module/kvm/parameters/collapse_mode") as f:
            mode = f.read().strip()
    except FileNotFoundError:
        mode = "upstream"  # an unmodified kernel, for comparison
    os.makedirs(args.workdir, exist_ok=True)
    with open("/proc/cmdline") as f:
        cmdline = f.read().split()
    # Multi-threaded TCG: see the retry below.
    emulated = "lazy_tcg=1" in cmdline
    cpus = sorted(os.sched_getaffinity(0))
    if emulated and len(cpus) >= 2:
        PIN["qemu"], PIN["worker"] = cpus[-1], set(cpus[:-1])
        log("TCG: QEMU on CPU %d" % cpus[-1])
    vm = None
    try:
        cases, tries, logged = list(args.cases), 1, False
        while True:
            try:
                if vm is None:
                    vm = start(args, mode)
                    if vm is None:
                        return KSFT_SKIP
                    if args.control:
                        return control(vm, args.control)
                while cases:
                    # The migration turns dirty logging on.
                    logged = True
                    scenario(vm, cases[0], mode, args.bandwidth, args.hold)
                    cases.pop(0)
                break
            except (GuestReset, GuestStalled) as e:
                # The emulator's, before any logging (the one retry
                # policy: see TRIES); never with real virtualisation.
                if not emulated or logged or tries >= TRIES:
                    raise
                tries += 1
                log("RETRY: %s under TCG, before any logging, try %d of %d"
                    % (e, tries, TRIES))
                stop(vm, args.workdir)
                vm = None
    except Failed as e:
        log("FAIL: %s" % e)
        if vm:
            log("guest's serial port: " +
                " | ".join(vm.guest_output().splitlines()[-3:]))
        return 1
    finally:
        stop(vm, args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
