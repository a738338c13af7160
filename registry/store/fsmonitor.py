"""The monitor daemon: a process that keeps watching one registry, so that a new handle (each
`stemma` command, a script's `Registry.open`) need not stat every spec, manifest and dvc.lock
to know that the index still matches them.

`stemma monitor start` runs it in the background (`run` in the foreground, `stop`, `status`),
as `git fsmonitor--daemon` does for git's index. It places the watches a kept-open handle's
monitor places (`_monitor`) and answers one question on a Unix socket: a token,
EPOCH:GENERATION. A generation lasts while its watches see no event; an event ends it, and
the watches follow what it made appear (`Monitor.changed`) before the next generation is
answered; where they cannot (a lost event, a kinds' folder replaced, a link), every watch is
placed anew first. So two equal answers mean that nothing the index reads changed between
them: every change is a system call, and inotify queues its event before the call returns,
so the daemon, which reads its queue before each answer, has seen every change made before
the question.

The index records the token it was last brought in step under (`raw.meta`, key `watched`),
taken before the full check that brought it in step (`index._refresh`). A later open that
gets the same token uses the index as it is. Anything else is the full check: no daemon, a
socket that is not this user's, a daemon that watches another folder, no answer within
TIMEOUT_S, a daemon that restarted (another epoch), a generation that ended.

What inotify does not report is not seen: a change through a shared writable mapping (mmap)
of a spec, as for git's fsmonitor, and any change on a network or FUSE file system (the
daemon does not start there: `_monitor.LOCAL_FILE_SYSTEMS`).

The socket lives in the user's runtime folder (`$XDG_RUNTIME_DIR/stemma`, else
`/tmp/stemma-UID`), a folder that must be this user's alone (mode 0700, not a link), named
by a digest of the registry's real path: the daemon writes nothing in the repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stemma.registry.errors import StemmaError
from stemma.registry.store._monitor import Monitor

if TYPE_CHECKING:
    import socket

# How long a question waits for the daemon's answer before the full check is made instead.
# An answer after an event waits for the watches to be placed again: ~0.3 s at 30,000 models.
TIMEOUT_S = 2.0
# How often an idle daemon looks whether its registry and its socket are still there.
LOOK_S = 5.0
# After watches that could not be placed (a link among the folders, too many watches), how
# long the daemon answers `none` at once before it tries again: placing 120,000 watches at
# 30,000 models takes a while, and every question would otherwise wait for it.
RETRY_S = 10.0
# The longest answer read (the status); a token answer is one short line.
MAX_ANSWER = 1 << 16
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class MonitorError(StemmaError):
    """The monitor daemon cannot run, or cannot be reached."""


def runtime_dir(create: bool = False) -> Path | None:
    """This user's folder for the daemons' sockets, or None where there is none that is this
    user's alone (another owner, group or world access, a link, not a folder)."""
    uid = os.getuid()
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    folder = Path(base, "stemma") if os.path.isabs(base) else Path(f"/tmp/stemma-{uid}")
    if create:
        with contextlib.suppress(OSError):  # there already, or not possible: checked below
            os.mkdir(folder, 0o700)
    try:
        st = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        return None
    return folder


def socket_path(root: Path, create: bool = False) -> Path | None:
    """The socket of the daemon watching the registry at `root` (None: no runtime folder)."""
    folder = runtime_dir(create)
    if folder is None:
        return None
    name = hashlib.sha256(os.fsencode(os.path.realpath(root))).hexdigest()[:32]
    return folder / f"{name}.sock"


def identity(root: Path) -> str:
    """Which folder `root` is (device and inode), as the daemon and its clients compare it."""
    st = os.stat(root)
    return f"{st.st_dev}:{st.st_ino}"


def ask(root: Path, request: str, timeout: float = TIMEOUT_S) -> bytes | None:
    """The daemon's answer to `request` (one line), or None: no daemon, a socket or a peer
    that is not this user's, no whole answer within `timeout` seconds."""
    path = socket_path(root)
    if path is None:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    uid = os.getuid()
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != uid:
        return None
    import socket  # here: an open with no daemon (no socket) does not pay for its import

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        peer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        if _PEERCRED.unpack(peer)[1] != uid:
            return None
        sock.sendall(request.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") and len(data) < MAX_ANSWER:
            chunk = sock.recv(MAX_ANSWER)
            if not chunk:
                break
            data += chunk
    except OSError:  # refused (a daemon that died), a timeout, a reset
        return None
    finally:
        sock.close()
    return data if data.endswith(b"\n") else None


def token(root: Path) -> str | None:
    """The daemon's token for `root` (EPOCH:GENERATION), or None: no daemon, or one that
    cannot vouch for the files now (see the module doc)."""
    answer = ask(root, "token")
    if answer is None:
        return None
    fields = answer.split()
    if len(fields) != 3 or fields[0] != b"ok":
        return None
    try:
        here = identity(root)
    except OSError:
        return None
    return fields[1].decode() if fields[2].decode() == here else None


def status(root: Path) -> dict[str, Any] | None:
    """What the daemon watching `root` says of itself, or None where none answers."""
    answer = ask(root, "status")
    if answer is None:
        return None
    try:
        found = json.loads(answer)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def stop(root: Path) -> bool:
    """Ask the daemon watching `root` to stop; False where none answered."""
    return ask(root, "stop") is not None


class Daemon:
    """The watches of one registry and the generation they stand for."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self.identity = identity(self.root)
        self.epoch = os.urandom(8).hex()
        self.generation = 0
        self.monitor: Monitor | None = None
        self.started = time.time()
        self.answers = 0
        self.failed_at = -RETRY_S  # when the watches last could not be placed
        self.starts = 0  # how often every watch was placed

    def follow(self) -> None:
        """Read the events queued: a change ends the generation; watches that cannot follow
        what changed are dropped (placed anew at the next question)."""
        if self.monitor is None:
            return
        changed = self.monitor.changed()
        if changed is None:
            self.drop()
        elif changed:
            self.generation += 1

    def token(self) -> bytes:
        """The answer to `token`: the generation after every event queued now (`none` where
        the watches cannot be placed)."""
        self.answers += 1
        self.follow()
        if self.monitor is None:
            if time.monotonic() - self.failed_at >= RETRY_S:
                self.monitor = Monitor.start(self.root)
                if self.monitor is None:
                    self.failed_at = time.monotonic()
                else:
                    self.starts += 1
            if self.monitor is None:
                return b"none - %s\n" % self.identity.encode()
            self.generation += 1
        return b"ok %s:%d %s\n" % (self.epoch.encode(), self.generation, self.identity.encode())

    def status(self) -> bytes:
        """The answer to `status`: one line of JSON."""
        body = {
            "root": str(self.root),
            "pid": os.getpid(),
            "started": round(self.started, 3),
            "epoch": self.epoch,
            "generation": self.generation,
            "watching": self.monitor is not None and not self.monitor.doubt,
            "answers": self.answers,
            "starts": self.starts,
        }
        return json.dumps(body, sort_keys=True).encode() + b"\n"

    def drop(self) -> None:
        """Remove the watches (the next question places them again)."""
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.close()

    def still_there(self) -> bool:
        """Whether the registry is still the folder this daemon watches."""
        try:
            return identity(self.root) == self.identity
        except OSError:
            return False


def serve(root: Path, ready: Callable[[Path], None] | None = None) -> None:
    """Watch the registry at `root` and answer on its socket until asked to stop, the socket
    is removed or replaced, or the registry's folder is gone (`MonitorError` where no daemon
    can run: no inotify, a network file system, no runtime folder, one already running)."""
    daemon = Daemon(root)
    daemon.monitor = Monitor.start(daemon.root)  # the first generation's watches
    if daemon.monitor is None:
        raise MonitorError(
            f"{daemon.root}: cannot be watched here (no inotify, not a local file system,"
            " too many watches, or a link among the model and dataset folders)"
        )
    daemon.generation = daemon.starts = 1
    path = socket_path(daemon.root, create=True)
    if path is None:
        daemon.drop()
        raise MonitorError("no runtime folder of this user's alone for the monitor's socket")
    running = status(daemon.root)
    if running is not None:
        daemon.drop()
        raise MonitorError(f"{daemon.root}: a monitor already runs (pid {running.get('pid')})")
    import socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    mine = -1
    try:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # the socket of a daemon that died
            listener.bind(str(path))
            os.chmod(path, 0o600)
            mine = os.lstat(path).st_ino
        except OSError as exc:
            raise MonitorError(f"{path}: {exc.strerror or exc}") from None
        listener.listen(64)
        if ready is not None:
            ready(path)
        _loop(daemon, listener, path, mine)
    finally:
        listener.close()
        daemon.drop()
        with contextlib.suppress(OSError):
            if os.lstat(path).st_ino == mine:
                os.unlink(path)


def _loop(daemon: Daemon, listener: socket.socket, path: Path, mine: int) -> None:
    """Answer questions; drain the watches' events as they come (so the kernel's queue never
    overflows while nobody asks); look now and then whether to go on."""
    import select

    looked = time.monotonic()
    while True:
        monitor = daemon.monitor
        watched = [listener.fileno()] + ([monitor.fd] if monitor is not None else [])
        readable, _, _ = select.select(watched, [], [], LOOK_S)
        if monitor is not None and monitor.fd in readable:
            daemon.follow()
        if listener.fileno() in readable and not _answer(daemon, listener):
            return
        if time.monotonic() - looked >= LOOK_S:
            looked = time.monotonic()
            try:
                ours = os.lstat(path).st_ino == mine
            except OSError:
                ours = False
            if not ours or not daemon.still_there():
                return


def _answer(daemon: Daemon, listener: socket.socket) -> bool:
    """Answer one question; False when it was `stop`."""
    import socket

    try:
        conn, _ = listener.accept()
    except OSError:
        return True
    with conn:
        try:
            conn.settimeout(1.0)
            peer = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            if _PEERCRED.unpack(peer)[1] != os.getuid():
                return True  # another user's question: not answered
            request = b""
            while not request.endswith(b"\n") and len(request) < 64:
                chunk = conn.recv(64)
                if not chunk:
                    break
                request += chunk
            request = request.strip()
            if request == b"token":
                conn.sendall(daemon.token())
            elif request == b"status":
                conn.sendall(daemon.status())
            elif request == b"stop":
                conn.sendall(b"stopping\n")
                return False
        except OSError:
            pass
    return True
