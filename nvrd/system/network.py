"""Local addresses of this host, read over netlink with pyroute2."""

from __future__ import annotations

import ipaddress
import logging

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def local_addresses() -> list[IPAddress]:
    """Every address on every interface, loopback included, in a stable order.

    Falls back to the loopback addresses where netlink is unavailable (a restricted
    sandbox), since a certificate without them is still better than no HTTPS.
    """
    found: set[IPAddress] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for message in ipr.get_addr():
                value = message.get_attr("IFA_ADDRESS")
                if value:
                    found.add(ipaddress.ip_address(value.split("%")[0]))
    except Exception as exc:  # netlink refused or pyroute2 changed: degrade, don't die
        log.warning("cannot list local addresses over netlink: %s", exc)
    return sorted(found, key=lambda a: (a.version, int(a)))
