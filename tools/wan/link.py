"""An emulated internet link between this machine's own network namespace (the client: a mount must be made
where the user's programs see it) and a server namespace, through a router namespace (root only).

    host (client)               netns <p>r (router)                              netns <p>s (server)
    <p>h 10.N.0.1  <-- veth -->  <p>a 10.N.0.2 | <p>b 10.N.1.1  <-- veth -->  <p>v 10.N.1.2

In the router each packet is routed by the veth it came in on into a TUN device of its direction; the delay line
(``delayline.c``, built with the system's C compiler) holds it for half the round trip and writes it back, and the
kernel forwards it on. The rate is ``tbf`` on the router's two outgoing veths, with a drop-tail buffer of one
bandwidth-delay product. Real kernel TCP runs end to end: handshakes, slow start, losses at the bottleneck.
(The kernel here has no ``sch_netem``, hence the delay line.)

Every name carries a slot number (``mxw<N>``, subnet 10.(214+N)/16), taken by creating the router namespace (which
fails when it exists), so a benchmark and a test run side by side. :meth:`Link.down` removes everything the link
made; an ``unreachable`` route for the slot's /16 keeps its traffic off the default route whatever happens.

    python -m tools.wan.link down N     remove a slot a killed run left behind
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "delayline.c"
SLOTS = 10
PORT = 80


class LinkError(RuntimeError):
    pass


CONGESTION_CONTROL = Path("/proc/sys/net/ipv4/tcp_congestion_control")


def congestion_control(netns: str | None = None) -> str:
    """The default TCP congestion control of this namespace, or of ``netns``."""
    if netns is None:
        return CONGESTION_CONTROL.read_text().strip()
    done = subprocess.run(["ip", "netns", "exec", netns, "cat", str(CONGESTION_CONTROL)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise LinkError(f"reading the congestion control of {netns}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def host_congestion_control(name: str | None) -> Iterator[None]:
    """The host's default congestion control is ``name`` for the block (None: left as it is). A new network
    namespace starts with a copy of the host's default and, on some kernels, may not change its own (EPERM even
    as root): the only way to choose what the origin sends with is to have the host's default right while its
    namespace is made. The block is that one ``ip netns add``; sockets the host opens in those milliseconds
    would get it too, which is why it is a choice (``--origin-cc``), never the default."""
    before = congestion_control()
    if name is None or name == before:
        yield
        return
    try:
        CONGESTION_CONTROL.write_text(name)
    except OSError as exc:
        allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text().strip()
        raise LinkError(f"congestion control {name!r}: {exc.strerror} (this kernel allows: {allowed})") from None
    try:
        yield
    finally:
        CONGESTION_CONTROL.write_text(before)



def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 10 s: a helper process of the link (delay line, nginx) never outlives it."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

@dataclass(frozen=True)
class Shape:
    rtt_ms: float
    rate_mbit: float = 100.0
    loss: float = 0.0  # random loss per packet, each way (0.005 = 0.5 %)

    def __str__(self) -> str:
        loss = f", {self.loss * 100:g} % loss" if self.loss else ""
        return f"{self.rtt_ms:g} ms, {self.rate_mbit:g} Mbit/s{loss}"

    @property
    def bytes_per_second(self) -> float:
        return self.rate_mbit * 1e6 / 8


def missing() -> str | None:
    """Why this machine cannot build the link, or None."""
    if sys.platform != "linux":
        return "the emulated link needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the emulated link needs root (network namespaces, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2)"
    if compiler() is None:
        return "no C compiler for the delay line (apt install gcc libc6-dev)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (the delay line's TUN devices)"
    return None


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def build_delayline(build: Path) -> Path:
    """The delay line, compiled when its source is newer than the binary."""
    binary = build / "delayline"
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    cc = compiler()
    if cc is None:
        raise LinkError("no C compiler for the delay line (apt install gcc libc6-dev)")
    build.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([cc, "-O2", "-Wall", "-o", str(binary), str(SOURCE)], capture_output=True, text=True)
    if done.returncode != 0:
        raise LinkError(f"building the delay line failed:\n{done.stderr}")
    return binary


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise LinkError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


class Link:
    def __init__(self, slot: int, build: Path) -> None:
        self.slot = slot
        self.build = build
        p = f"mxw{slot}"
        self.router, self.server = f"{p}r", f"{p}s"
        self.host_if, self.router_a, self.router_b, self.server_if = f"{p}h", f"{p}a", f"{p}b", f"{p}v"
        self.tun_up, self.tun_down = f"{p}up", f"{p}dn"
        net = f"10.{214 + slot}"
        self.net = f"{net}.0.0/16"
        self.client_ip, self.router_ip_a = f"{net}.0.1", f"{net}.0.2"
        self.router_ip_b, self.server_ip = f"{net}.1.1", f"{net}.1.2"
        self.shape: Shape | None = None
        self.origin_cc = ""  # the server namespace's TCP congestion control: what the origin sends with
        self._delay: subprocess.Popen[bytes] | None = None
        self.delay_log = build / f"delayline-{slot}.log"

    @property
    def url(self) -> str:
        return f"http://{self.server_ip}:{PORT}"

    def in_server(self, cmd: list[str]) -> list[str]:
        """``cmd`` run in the server namespace."""
        return ["ip", "netns", "exec", self.server, *cmd]

    # -- building and removing ------------------------------------------------------------------------

    def build_up(self, shape: Shape, origin_cc: str | None = None) -> None:
        """Everything but the router namespace (made by :func:`claim`); on any failure, :meth:`down`.
        ``origin_cc``: the TCP congestion control the origin sends with (None: the host's default)."""
        try:
            delayline = build_delayline(self.build)
            r = ["-n", self.router]
            with host_congestion_control(origin_cc):
                ip("netns", "add", self.server)
            self.origin_cc = congestion_control(self.server)
            if origin_cc is not None and self.origin_cc != origin_cc:
                raise LinkError(f"the server namespace sends with {self.origin_cc}, not {origin_cc}")
            ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.router_a)
            ip("link", "set", self.router_a, "netns", self.router)
            ip(*r, "link", "add", self.router_b, "type", "veth", "peer", "name", self.server_if)
            ip(*r, "link", "set", self.server_if, "netns", self.server)
            # The safety net first: the slot's addresses never fall through to the default route.
            ip("route", "add", "unreachable", self.net, "metric", "4000")
            ip("addr", "add", f"{self.client_ip}/24", "dev", self.host_if)
            ip("link", "set", self.host_if, "up")
            ip("route", "add", f"{self.server_ip.rsplit('.', 1)[0]}.0/24", "via", self.router_ip_a, "dev", self.host_if)
            ip(*r, "link", "set", "lo", "up")
            ip(*r, "addr", "add", f"{self.router_ip_a}/24", "dev", self.router_a)
            ip(*r, "addr", "add", f"{self.router_ip_b}/24", "dev", self.router_b)
            for dev in (self.router_a, self.router_b):
                ip(*r, "link", "set", dev, "up")
            for dev in (self.tun_up, self.tun_down):
                ip(*r, "tuntap", "add", "dev", dev, "mode", "tun")
                ip(*r, "link", "set", dev, "up")
            sysctls = ["net.ipv4.ip_forward=1"]
            for dev in ("all", "default", self.router_a, self.router_b, self.tun_up, self.tun_down):
                sysctls += [f"net.ipv4.conf.{dev}.rp_filter=0", f"net.ipv4.conf.{dev}.send_redirects=0"]
            subprocess.run(["ip", "netns", "exec", self.router, "sysctl", "-qw", *sysctls], check=True)
            # Each direction into its TUN device, by the veth the packet came in on.
            ip(*r, "route", "add", "default", "dev", self.tun_up, "table", "100")
            ip(*r, "route", "add", "default", "dev", self.tun_down, "table", "101")
            ip(*r, "rule", "add", "pref", "100", "iif", self.router_a, "lookup", "100")
            ip(*r, "rule", "add", "pref", "101", "iif", self.router_b, "lookup", "101")
            s = ["-n", self.server]
            ip(*s, "link", "set", "lo", "up")
            ip(*s, "addr", "add", f"{self.server_ip}/24", "dev", self.server_if)
            ip(*s, "link", "set", self.server_if, "up")
            ip(*s, "route", "add", "default", "via", self.router_ip_b)
            self.delayline = delayline
            self.reshape(shape)
        except BaseException:
            self.down()
            raise

    def reshape(self, shape: Shape) -> None:
        """Rate, round trip and loss: tbf replaced, the delay line restarted (packets it held are lost, so
        change the shape between runs, not during one)."""
        bdp = int(shape.bytes_per_second * shape.rtt_ms / 1000)
        for dev in (self.router_a, self.router_b):
            done = subprocess.run(["ip", "netns", "exec", self.router, "tc", "qdisc", "replace", "dev", dev, "root",
                                   "tbf", "rate", f"{shape.rate_mbit:g}mbit", "burst", "32kb",
                                   "limit", str(max(bdp, 64 << 10))], capture_output=True, text=True)
            if done.returncode != 0:
                raise LinkError(f"tc on {dev}: {done.stderr.strip()}")
        self._stop_delay()
        half_us = int(shape.rtt_ms * 1000 / 2)
        with self.delay_log.open("ab") as log:
            self._delay = subprocess.Popen(
                ["ip", "netns", "exec", self.router, str(self.delayline), self.tun_up, self.tun_down, str(half_us),
                 str(round(shape.loss * 1e6))], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        self.shape = shape
        self.wait_ready()

    def bytes_to_client(self) -> int:
        """Bytes the link has carried towards the client so far (tbf's counter on the router's client side,
        IP headers included): what the user's line carried, unlike a server's count of what it wrote to sockets
        (bytes a client never read — a connection it closed — count there too)."""
        done = subprocess.run(["ip", "netns", "exec", self.router, "tc", "-s", "qdisc", "show", "dev", self.router_a],
                              capture_output=True, text=True, check=True)
        words = done.stdout.split()
        return int(words[words.index("Sent") + 1])

    def wait_ready(self) -> None:
        """The delay line holds its TUN devices (they are down, dropping everything, until it does)."""
        deadline = time.monotonic() + 10  # a hang guard: attaching takes milliseconds
        while True:
            assert self._delay is not None
            if self._delay.poll() is not None:
                raise LinkError(f"the delay line exited: {self.delay_log.read_text(errors='replace')[-2000:]}")
            done = ip("-n", self.router, "link", "show", self.tun_up)
            if "NO-CARRIER" not in done.stdout:
                return
            if time.monotonic() > deadline:
                raise LinkError("the delay line did not attach to its TUN devices")
            time.sleep(0.02)

    def _stop_delay(self) -> None:
        proc, self._delay = self._delay, None
        if proc is not None:
            stop_process(proc)

    def down(self) -> None:
        """Remove everything of this slot (idempotent; also what a killed run left)."""
        self._stop_delay()
        for ns in (self.server, self.router):
            for pid in ip("netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        ip("link", "del", self.host_if, check=False)  # takes its peer in the router
        ip("netns", "del", self.server, check=False)  # takes its veth and that one's peer
        ip("netns", "del", self.router, check=False)  # the TUN devices and qdiscs with it
        ip("route", "del", "unreachable", self.net, "metric", "4000", check=False)


def claim(build: Path) -> Link:
    """A free slot, taken: creating its router namespace fails when another run holds it."""
    for slot in range(SLOTS):
        link = Link(slot, build)
        if ip("netns", "add", link.router, check=False).returncode == 0:
            return link
    raise LinkError(f"all {SLOTS} link slots are taken (python -m tools.wan.link down N removes a stale one)")


@contextlib.contextmanager
def emulated(shape: Shape, build: Path, origin_cc: str | None = None) -> Iterator[Link]:
    """A link of this shape for the block, removed after it whatever happens (SIGTERM included: it is turned
    into SystemExit for the block, so the ``finally`` runs). ``origin_cc``: see :meth:`Link.build_up`."""
    previous = signal.getsignal(signal.SIGTERM)
    restore = False
    with contextlib.suppress(ValueError):  # not the main thread: the caller handles its signals
        signal.signal(signal.SIGTERM, _exit_on_term)
        restore = True
    link = claim(build)
    try:
        link.build_up(shape, origin_cc)
        yield link
    finally:
        link.down()
        if restore:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "down":
        Link(int(sys.argv[2]), Path("build/wan")).down()
    else:
        print("usage: python -m tools.wan.link down SLOT", file=sys.stderr)
        sys.exit(2)
