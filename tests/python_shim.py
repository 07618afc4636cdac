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


def forkable(argv) -> bool:
    """Whether the worker can run ``python ARGV``: ``-m MODULE ...``, ``-c CODE ...`` or ``SCRIPT ...``,
    each also after ``-u`` (as torch.distributed.run starts its workers)."""
    argv = argv[1:] if argv[:1] == ["-u"] else argv
    return bool(argv) and (argv[0] in ("-m", "-c") and len(argv) > 1 or not argv[0].startswith("-"))


def main(address: str, interpreter: str) -> None:
    argv = sys.argv[1:]
    connection = socket.socket(socket.AF_UNIX)
    try:
        if not forkable(argv):
            raise OSError("not a command line the worker runs")
        connection.connect(address)
        request = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        socket.send_fds(connection, [struct.pack("!Q", len(request))], [0, 1, 2])
    except OSError:
        connection.close()
        os.execv(interpreter, [interpreter, *argv])
    connection.sendall(request)
    for number in FORWARDED:
        signal.signal(number, lambda received, _: connection.sendall(struct.pack("!i", received)))
    reply = b""
    while len(reply) < 4:
        chunk = connection.recv(4 - len(reply))
        if not chunk:
            os._exit(1)  # the worker went away
        reply += chunk
    status = struct.unpack("!i", reply)[0]
    if status < 0:  # die of the child's signal
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status)
