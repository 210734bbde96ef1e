#!/usr/bin/env python3
"""Check that an HXFR peer (vsockenc-host, or a legacy host) answers at an address.

    python3 docs/hxfr-ping.py unix:/tmp/vsockenc.sock
    python3 docs/hxfr-ping.py tcp:10.0.2.2:15937
    python3 docs/hxfr-ping.py vsock:2:5000

Addresses are spelled like vsockenc-host --listen (and like the element's log
lines). Sends one PING (a bare 12-byte HXFR header, type 0x10) and waits up
to 5 s for the PONG (type 0x11). Exit status 0 on a PONG, 1 otherwise. Needs
only Python 3 (AF_VSOCK: Python 3.7 or later on Linux).
"""

import socket
import struct
import sys

MAGIC = 0x52465848  # "HXFR" little-endian
PING, PONG = 0x10, 0x11
HEADER = struct.Struct("<IBBHI")  # magic, type, flags, session id, payload size


def connect(address):
    kind, _, rest = address.partition(":")
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(rest)
    elif kind == "tcp":
        host, _, port = rest.rpartition(":")
        s = socket.create_connection((host, int(port)), timeout=5)
    elif kind == "vsock":
        cid, _, port = rest.partition(":")
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect((int(cid), int(port)))
    else:
        raise ValueError(f"{address}: expected unix:PATH, tcp:HOST:PORT or vsock:CID:PORT")
    return s


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    address = sys.argv[1]
    try:
        s = connect(address)
        s.sendall(HEADER.pack(MAGIC, PING, 0, 1, 0))
        reply = s.recv(HEADER.size, socket.MSG_WAITALL)
    except (OSError, ValueError) as e:
        print(f"{address}: {e}")
        return 1
    if len(reply) < HEADER.size:
        print(f"{address}: connection closed without an answer")
        return 1
    magic, msg_type, _, _, _ = HEADER.unpack(reply)
    if magic != MAGIC:
        print(f"{address}: not an HXFR peer (magic {magic:#010x})")
        return 1
    if msg_type != PONG:
        print(f"{address}: HXFR peer answered type {msg_type:#04x}, not PONG")
        return 1
    print(f"{address}: PONG")
    return 0


if __name__ == "__main__":
    sys.exit(main())
