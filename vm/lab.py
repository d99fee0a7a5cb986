"""The DR test lab: two sites in network namespaces joined by one veth link, built with pyroute2.

    python -m vm.lab up [--tag vstor] [--rate 1gbit]   # namespaces TAG-a and TAG-b, link 10.77.N.1 <-> .2
    python -m vm.lab cut | heal [--tag vstor]          # take the link down / up (both ends)
    python -m vm.lab status | down [--tag vstor]       # show it / remove everything

Site A is ``TAG-a`` with address ``.1``, site B ``TAG-b`` with ``.2``, on a /24 derived from
the tag so that several labs can exist at once. ``--rate`` shapes A's egress with tbf (this
kernel has no netem). Processes join a site with :meth:`Lab.command`, which enters only the
network namespace (``nsenter --net``): a FUSE mount made there stays visible to the host,
where ``ip netns exec`` would give it a private mount namespace. ``down`` ends every process
still in the namespaces and removes them, also after a failure half-way through ``up``.
Traffic never leaves the two namespaces: the veth has no end in the host's namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute, NetNS, netns

SITES = ("a", "b")
VSTOR = os.path.join(os.path.dirname(sys.executable), "vstor")


@dataclass
class Lab:
    tag: str = "vstor"
    rate: str | None = None  # tbf rate on A's egress, e.g. "1gbit"; None: unshaped

    @property
    def net(self) -> int:
        return 16 + zlib.crc32(self.tag.encode()) % 200  # third octet of 10.77.N.0/24

    def ns(self, site: str) -> str:
        return f"{self.tag}-{site}"

    def ifname(self, site: str) -> str:
        return f"{self.tag[:10]}-{site}"  # interface names are at most 15 bytes

    def address(self, site: str) -> str:
        return f"10.77.{self.net}.{SITES.index(site) + 1}"

    # -- lifecycle ---------------------------------------------------------------------------
    def up(self) -> Lab:
        """Create both namespaces and the link; on any failure remove what was made."""
        try:
            for site in SITES:
                if self.ns(site) in netns.listnetns():
                    raise RuntimeError(f"lab {self.tag!r} already exists (namespace {self.ns(site)}); "
                                       f"remove it with 'python -m vm.lab down --tag {self.tag}'")
                netns.create(self.ns(site))
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.ifname("a"), kind="veth", peer={"ifname": self.ifname("b")})
                for site in SITES:
                    (idx,) = ipr.link_lookup(ifname=self.ifname(site))
                    ipr.link("set", index=idx, net_ns_fd=self.ns(site))
            for site in SITES:
                with NetNS(self.ns(site)) as ns:
                    ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                    idx = ns.link_lookup(ifname=self.ifname(site))[0]
                    ns.addr("add", index=idx, address=self.address(site), prefixlen=24)
                    ns.link("set", index=idx, state="up")
                    if site == "a" and self.rate:
                        ns.tc("add", "tbf", index=idx, handle="1:", rate=self.rate, burst=1 << 20, latency="50ms")
        except BaseException:
            self.down()
            raise
        return self

    def _set_link(self, state: str) -> None:
        for site in SITES:
            with NetNS(self.ns(site)) as ns:
                ns.link("set", index=ns.link_lookup(ifname=self.ifname(site))[0], state=state)

    def cut(self) -> None:
        """Take the link down at both ends: packets in flight are lost, connections time out."""
        self._set_link("down")

    def heal(self) -> None:
        self._set_link("up")

    def down(self) -> None:
        """End every process left in the sites, then remove the namespaces (and the link)."""
        for site in SITES:
            name = self.ns(site)
            if name not in netns.listnetns():
                continue
            _end_processes(name)
            netns.remove(name)

    def status(self) -> dict:
        out: dict = {"tag": self.tag, "sites": {}}
        for site in SITES:
            name = self.ns(site)
            if name not in netns.listnetns():
                continue
            with NetNS(name) as ns:
                idx = ns.link_lookup(ifname=self.ifname(site))
                link = ns.get_links(idx[0])[0] if idx else None
                qdiscs = [q.get_attr("TCA_KIND") for q in ns.get_qdiscs(index=idx[0])] if idx else []
            out["sites"][site] = {"namespace": name, "address": self.address(site),
                                  "link": link.get("state") if link else None, "qdiscs": qdiscs,
                                  "pids": pids_in(name)}
        return out

    # -- running things in a site ------------------------------------------------------------
    def command(self, site: str, argv: list[str]) -> list[str]:
        """argv run in ``site``'s network namespace only (the host's mounts stay shared)."""
        return ["nsenter", f"--net=/run/netns/{self.ns(site)}", *argv]

    def start_arrays(self, base: str, port: int = 7450) -> dict[str, dict]:
        """A CA in BASE/tls, then per site a pool BASE/site-X/pool, initialised if missing, and an
        array started in the site's namespace, mounted at BASE/site-X/mnt, listening on its address."""
        from vstor.replication.pki import init_ca, issue

        tls = os.path.join(base, "tls")
        if not os.path.exists(os.path.join(tls, "ca.pem")):
            init_ca(tls)
        out = {}
        for site in SITES:
            name, root = f"site-{site}", os.path.join(base, f"site-{site}")
            if not os.path.exists(os.path.join(tls, f"{name}.pem")):
                issue(tls, name)
            pool, mnt = os.path.join(root, "pool"), os.path.join(root, "mnt")
            if not os.path.exists(os.path.join(pool, "pool.json")):
                subprocess.run([VSTOR, "pool", "init", pool], check=True, capture_output=True)
            listen = f"{self.address(site)}:{port}"
            r = subprocess.run(self.command(site, [VSTOR, "array", "start", "--pool", pool, "--mount", mnt,
                                                   "--listen", listen, "--tls-dir", tls, "--name", name]),
                               capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"array at site {site} did not start: {r.stderr.strip()}")
            out[site] = {"pool": pool, "mount": mnt, "listen": listen, "name": name}
        return out

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


def pids_in(name: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def _end_processes(name: str, grace: float = 10.0) -> None:
    """SIGTERM what runs in the namespace (arrays stop cleanly on it), SIGKILL what stays."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = pids_in(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids_in(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pids_in(name):
            return


@contextlib.contextmanager
def lab(tag: str = "vstor", rate: str | None = None) -> Iterator[Lab]:
    with Lab(tag, rate) as lb:
        yield lb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vm.lab", description="the vstor DR test lab")
    p.add_argument("action", choices=["up", "down", "cut", "heal", "status"])
    p.add_argument("--tag", default="vstor", help="name prefix of the namespaces (default vstor)")
    p.add_argument("--rate", help="shape site A's egress with tbf, like 1gbit or 100mbit")
    p.add_argument("--arrays", metavar="DIR", help="with up: also start an array in each site, pools under DIR")
    a = p.parse_args(argv)
    lb = Lab(a.tag, a.rate)
    try:
        if a.action == "status":
            print(json.dumps(lb.status(), indent=2))
        elif a.action == "up" and a.arrays:
            lb.up()
            try:
                print(json.dumps(lb.start_arrays(os.path.abspath(a.arrays)), indent=2))
            except BaseException:
                lb.down()
                raise
        else:
            getattr(lb, a.action)()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(f"vm.lab: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
