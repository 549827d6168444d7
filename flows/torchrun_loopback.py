"""``python -m flows.torchrun_loopback <torchrun arguments>``: torchrun whose rendezvous store listens on the
master address only.

torchrun's static rendezvous starts a TCPStore server in the node-0 launcher, and a TCPStore server binds
every interface whatever host name it is given; it has no authentication, so anyone who reaches the port can
read and write the job's keys. For a local run (``flows.torchrun_compat`` uses this launcher when the master
address is a loopback address) the server is given a socket already bound to that address
(``master_listen_fd``), so the store is reachable from this machine only. Everything else is
``torch.distributed.run``.
"""

from __future__ import annotations

import socket
import sys


def bound_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (SO_REUSEADDR, like TCPStore's own)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def install() -> None:
    """Make the static rendezvous pass a loopback-bound socket to the TCPStore it hosts."""
    from torch.distributed.elastic.rendezvous import static_tcp_rendezvous

    original = static_tcp_rendezvous.TCPStore
    listeners: list[socket.socket] = []  # kept open for the process's life: the store owns the fd

    def loopback_store(host_name, port, world_size=None, is_master=False, *args, **kwargs):
        if is_master and "master_listen_fd" not in kwargs:
            listener = bound_listener("127.0.0.1" if host_name == "localhost" else host_name, int(port))
            listeners.append(listener)
            kwargs["master_listen_fd"] = listener.fileno()
        return original(host_name, port, world_size, is_master, *args, **kwargs)

    static_tcp_rendezvous.TCPStore = loopback_store


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.run import main as torchrun_main

    install()
    torchrun_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
