"""The shim's side of tests/forked_cli.py's python_shim(), run as ``python -SE`` (the standard library
only, a few milliseconds): ``-m MODULE``, ``-c CODE`` and ``SCRIPT`` command lines go to the test
worker, which forks them; any other command line, or no worker to take it, execs the real
interpreter."""

import json
import os
import signal
import socket
import struct
import sys

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

LENGTH = struct.Struct("!Q")
"""The protocol, both sides: the request's length (with the shim's stdin, stdout and stderr), then the
request as JSON; then from the shim the signals it received, from the worker the exit status (each a
NUMBER; negative: the signal the command died of)."""
NUMBER = struct.Struct("!i")


def receive(connection: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from ``connection``; EOFError where the other side went away first."""
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise EOFError("the other side of the shim's connection went away")
        data += chunk
    return data


def split_unbuffered(argv):
    """(whether ``argv`` starts with ``-u``, the rest of it): torch.distributed.run starts its workers so."""
    return (True, argv[1:]) if argv[:1] == ["-u"] else (False, argv)


def forkable(argv) -> bool:
    """Whether the worker can run ``python ARGV``: ``-m MODULE ...``, ``-c CODE ...`` or ``SCRIPT ...``,
    each also after ``-u``."""
    _, argv = split_unbuffered(argv)
    return bool(argv) and (argv[0] in ("-m", "-c") and len(argv) > 1 or not argv[0].startswith("-"))


def main(address: str, interpreter: str) -> None:
    argv = sys.argv[1:]
    connection = socket.socket(socket.AF_UNIX)
    try:
        if not forkable(argv):
            raise OSError("not a command line the worker runs")
        connection.connect(address)
        request = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        socket.send_fds(connection, [LENGTH.pack(len(request))], [0, 1, 2])
    except OSError:
        connection.close()
        os.execv(interpreter, [interpreter, *argv])
    connection.sendall(request)
    for number in FORWARDED:
        signal.signal(number, lambda received, _: connection.sendall(NUMBER.pack(received)))
    try:
        (status,) = NUMBER.unpack(receive(connection, NUMBER.size))
    except EOFError:  # the worker went away
        os._exit(1)
    if status < 0:  # die of the child's signal
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status)
