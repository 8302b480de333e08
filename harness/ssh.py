"""Remotes that act on a node: `SSHRemote` (paramiko) and `LocalRemote` (subprocess, this machine).

Both run shell strings as root (`sudo -n` when the login user is not root) and share one
implementation of daemons, written as small shell scripts over `run`, so the embedded cluster,
VMs and the no-root loopback fallback start, find and signal processes the same way:

- a daemon is started under `setsid` with SIGHUP ignored (nohup), stdin from /dev/null and its
  output appended to its log; the process itself writes its pid to the pidfile before it execs,
  so the pid is the daemon's, never a wrapper's;
- next to the pidfile, `<pidfile>.argv` records the argv (JSON) so `daemon_pid` can tell our
  process from a reused pid: alive, not a zombie, and its /proc cmdline ends with that argv.

SSH specifics: one paramiko transport per node, opened lazily under a lock and reopened when it
dies; every command gets its own channel, so threads may share a remote. Connecting retries only
transient failures (refused, reset, no banner yet: sshd is starting) with a bounded backoff; a
command that was started is never run again, whatever happens to the connection.
"""
from __future__ import annotations

import base64
import json
import os
import posixpath
import shlex
import signal
import socket
import subprocess
import threading
import time
import uuid

from harness.inventory import Node
from harness.remote import RemoteError, Result

DEFAULT_KNOWN_HOSTS = os.path.join(
    os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "etcdproof", "known_hosts"
)
_known_hosts_lock = threading.Lock()  # appends to a known_hosts file come from many remotes


def one_line(text: str, limit: int = 300) -> str:
    """Text squeezed onto one line (for error messages), the tail kept if it is long."""
    flat = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= limit else "..." + flat[-limit:]


def short_cmd(cmd: str, limit: int = 120) -> str:
    flat = " ".join(cmd.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def cmdline_matches(cmdline: list[str], argv: list[str]) -> bool:
    """Whether a /proc cmdline is the process argv started.

    The kernel rewrites a script's argv to `interpreter [arg] script args...`, keeping the script
    path as it was given; so the cmdline must end with argv[1:], preceded by argv[0] (or a path
    with the same basename, for a program found on PATH).
    """
    if not argv or len(cmdline) < len(argv):
        return False
    tail = cmdline[len(cmdline) - len(argv):]
    if tail[1:] != argv[1:]:
        return False
    return tail[0] == argv[0] or posixpath.basename(tail[0]) == posixpath.basename(argv[0])


class ShellRemote:
    """Daemons over `run`: what SSHRemote and LocalRemote share. Subclasses provide run."""

    node: str
    desc: str  # "n2 (root@10.x.x.x:22)", the prefix of every error message

    def run(self, cmd: str, timeout: float = 60.0, check: bool = True, stdin: str | None = None) -> Result:
        raise NotImplementedError

    def fail(self, problem: str) -> RemoteError:
        return RemoteError(f"{self.desc}: {problem}")

    def checked(self, res: Result, check: bool) -> Result:
        if check and res.exit != 0:
            detail = one_line(res.err) or one_line(res.out)
            raise self.fail(f"command exited {res.exit}: {short_cmd(res.cmd)}" + (f": {detail}" if detail else ""))
        return res

    # ----------------------------------------------------------------- daemons
    def start_daemon(self, argv: list[str], logfile: str, pidfile: str,
                     env: dict[str, str] | None = None, cwd: str | None = None) -> int:
        if not argv:
            raise self.fail("start_daemon: empty argv")
        live = self.daemon_pid(pidfile)
        if live is not None:
            raise self.fail(f"{posixpath.basename(argv[0])} already running as pid {live} ({pidfile})")
        q = shlex.quote
        envs = " ".join(q(f"{k}={v}") for k, v in (env or {}).items())
        # the child writes its own pid (before exec, so the pid is the daemon's) then execs
        inner = ': etcdproof-daemon; echo $$ > "$0"; exec nohup "$@"'
        script = "\n".join([
            f"command -v -- {q(argv[0])} >/dev/null || {{ echo 'no such program: {argv[0]}' >&2; exit 127; }}",
            f"mkdir -p -- {q(posixpath.dirname(pidfile) or '.')} {q(posixpath.dirname(logfile) or '.')}",
            f"rm -f -- {q(pidfile)}",
            f"printf '%s' {q(json.dumps(argv))} > {q(pidfile + '.argv')}",
            (f"cd {q(cwd)} || exit 1" if cwd else ":"),
            f"env {envs} setsid sh -c {q(inner)} {q(pidfile)} {' '.join(q(a) for a in argv)}"
            f" >> {q(logfile)} 2>&1 < /dev/null &",
            f"i=0; while [ ! -s {q(pidfile)} ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done",
            f"p=$(cat {q(pidfile)}) || exit 1",
            # wait until the wrapper and nohup have exec'd the program (or it died)
            "i=0; while [ -r /proc/$p/cmdline ] && [ $i -lt 500 ]; do",
            "  case $(tr '\\0' ' ' < /proc/$p/cmdline) in *etcdproof-daemon*|'nohup '*) ;; *) break;; esac",
            "  sleep 0.005; i=$((i+1)); done",
            "echo $p",
            f"if [ -r /proc/$p/cmdline ]; then echo running; else echo exited; tail -n 3 {q(logfile)}; fi",
        ])
        res = self.run(script, timeout=30, check=False)
        lines = res.out.splitlines()
        if res.exit != 0 or len(lines) < 2 or not lines[0].isdigit():
            detail = one_line(res.err) or one_line(res.out) or "no pidfile written"
            raise self.fail(f"cannot start {short_cmd(' '.join(argv))}: {detail}")
        if lines[1] != "running":
            tail = one_line("\n".join(lines[2:])) or "no output"
            raise self.fail(f"{short_cmd(' '.join(argv))} exited at once: {tail}")
        return int(lines[0])

    def daemon_pid(self, pidfile: str) -> int | None:
        q = shlex.quote(pidfile)
        # pid, process state, cmdline and the recorded argv, in one round trip
        script = (
            f"p=$(cat {q} 2>/dev/null) || exit 0; case $p in ''|*[!0-9]*) exit 0;; esac; "
            f"[ -r /proc/$p/stat ] || exit 0; echo $p; sed 's/.*) //' /proc/$p/stat | cut -d' ' -f1; "
            f"base64 -w0 /proc/$p/cmdline; echo; base64 -w0 {shlex.quote(pidfile + '.argv')} 2>/dev/null; echo"
        )
        res = self.run(script, timeout=20, check=True)
        lines = res.out.split("\n")
        if len(lines) < 4 or not lines[0].isdigit():
            return None
        pid, state = int(lines[0]), lines[1].strip()
        if state in ("Z", "X", "x", ""):
            return None
        cmdline = [a.decode(errors="replace") for a in base64.b64decode(lines[2]).split(b"\0")[:-1]]
        if lines[3].strip():
            try:
                argv = json.loads(base64.b64decode(lines[3]).decode())
            except (ValueError, UnicodeDecodeError):
                return None
            if not cmdline_matches(cmdline, argv):
                return None  # the pid was reused by another program, or it is still our wrapper
        return pid

    def signal_daemon(self, pidfile: str, sig: int) -> bool:
        pid = self.daemon_pid(pidfile)
        if pid is None:
            return False
        res = self.run(f"kill -s {signal.Signals(sig).name[3:]} {pid}", timeout=20, check=False)
        return res.exit == 0


class SSHRemote(ShellRemote):
    """A node over SSH (paramiko): key auth, host keys pinned or recorded, sudo when not root."""

    def __init__(self, node: Node, connect_timeout: float = 10.0, retry_for: float = 15.0) -> None:
        self.spec = node
        self.node = node.name
        self.desc = str(node)
        self.connect_timeout = connect_timeout
        self.retry_for = retry_for  # how long transient connection failures are retried
        self._client = None
        self._lock = threading.Lock()

    # -------------------------------------------------------------- connecting
    def _host_key_policy(self):
        import paramiko

        node, remote = self.spec, self

        class Record(paramiko.MissingHostKeyPolicy):
            """Trust on first use: accept an unknown key and append it to the harness's file."""

            def missing_host_key(self, client, hostname, key):
                path = node.known_hosts or DEFAULT_KNOWN_HOSTS
                with _known_hosts_lock:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "a") as f:
                        f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
                client.get_host_keys().add(hostname, key.get_name(), key)

        class Pinned(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client, hostname, key):
                raise remote.fail(f"host key {key.get_name()} is not the one pinned in {node.known_hosts}")

        class Accept(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client, hostname, key):
                pass  # the inventory said not to check (vagrant's own ssh-config does so)

        return {"pin": Pinned, "tofu": Record, "off": Accept}[node.host_keys]()

    def _new_client(self):
        import paramiko

        c = paramiko.SSHClient()
        if self.spec.host_keys == "pin":
            if not self.spec.known_hosts or not os.path.exists(self.spec.known_hosts):
                raise self.fail(f"pinned host keys file {self.spec.known_hosts} not found")
            c.load_host_keys(self.spec.known_hosts)
        elif self.spec.host_keys == "tofu":
            try:
                c.load_system_host_keys()
            except (OSError, paramiko.SSHException):
                pass
            path = self.spec.known_hosts or DEFAULT_KNOWN_HOSTS
            if os.path.exists(path):
                c.get_host_keys().load(path)
        c.set_missing_host_key_policy(self._host_key_policy())
        return c

    def _connect_once(self):
        import paramiko

        key = self.spec.key
        c = self._new_client()
        try:
            c.connect(
                self.spec.host, port=self.spec.port, username=self.spec.user,
                key_filename=key, allow_agent=key is None, look_for_keys=key is None,
                timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
            )
        except BaseException:
            c.close()
            raise
        t = c.get_transport()
        if t is not None:
            t.set_keepalive(15)
        return c

    def _connect(self):
        """A live client: the cached one, or a new connection (transient failures retried)."""
        import paramiko

        if self.spec.key and not os.path.exists(self.spec.key):
            raise self.fail(f"key file {self.spec.key} not found")
        deadline = time.monotonic() + self.retry_for
        delay = 0.1
        while True:
            try:
                return self._connect_once()
            except RemoteError:
                raise
            except paramiko.BadHostKeyException as e:
                where = self.spec.known_hosts if self.spec.host_keys == "pin" else (self.spec.known_hosts or DEFAULT_KNOWN_HOSTS)
                raise self.fail(f"host key changed: got {e.key.get_name()} {e.key.get_fingerprint().hex()}, "
                                f"expected the one in {where} (remove that line if the host was rebuilt)") from None
            except paramiko.PasswordRequiredException:
                raise self.fail(f"key {self.spec.key} is encrypted (load it into ssh-agent instead)") from None
            except paramiko.AuthenticationException:
                how = f"with key {self.spec.key}" if self.spec.key else "with the agent's and default keys"
                raise self.fail(f"authentication failed for {self.spec.user} {how}") from None
            except (paramiko.ssh_exception.NoValidConnectionsError, ConnectionRefusedError) as e:
                problem, transient = self._describe_socket_error(e)
            except (ConnectionResetError, EOFError) as e:
                problem, transient = f"connection reset ({e.__class__.__name__})", True
            except socket.timeout:
                raise self.fail(f"connection timed out after {self.connect_timeout:g}s (host unreachable?)") from None
            except socket.gaierror as e:
                raise self.fail(f"cannot resolve host {self.spec.host}: {e.strerror}") from None
            except OSError as e:
                raise self.fail(f"cannot connect: {e.strerror or e}") from None
            except paramiko.SSHException as e:
                text = str(e)
                transient = "banner" in text or "reset" in text.lower()
                problem = f"SSH handshake failed: {one_line(text)}"
            if not transient or time.monotonic() + delay > deadline:
                raise self.fail(problem)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    @staticmethod
    def _describe_socket_error(e: Exception) -> tuple[str, bool]:
        errs = list(getattr(e, "errors", {}).values()) or [e]
        if all(isinstance(x, ConnectionRefusedError) for x in errs):
            return "connection refused", True
        first = errs[0]
        text = getattr(first, "strerror", None) or str(first)
        return f"cannot connect: {text}", False

    def _transport(self):
        with self._lock:
            c = self._client
            t = c.get_transport() if c is not None else None
            if t is None or not t.is_active():
                if c is not None:
                    c.close()
                self._client = None
                self._client = self._connect()
                t = self._client.get_transport()
            return t

    def connect(self) -> None:
        """Connect now (otherwise the first command does); raises the one-line RemoteError."""
        self._transport()

    def _open_session(self):
        """A new channel. A connection found dead here is replaced once: nothing has run yet."""
        import paramiko

        for attempt in (1, 2):
            transport = self._transport()
            try:
                return transport.open_session(timeout=self.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError) as e:
                with self._lock:
                    if self._client is not None and self._client.get_transport() is transport:
                        self._client.close()
                        self._client = None
                if attempt == 2:
                    raise self.fail(f"cannot open a session: {one_line(str(e)) or e.__class__.__name__}") from None
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- commands
    def wrap(self, cmd: str, timeout: float) -> str:
        """The command line sent: a remote `timeout` as a backstop, sudo when not root."""
        wrapped = f"timeout -k 2 {max(1, int(timeout) + 1)} sh -c {shlex.quote(cmd)}"
        return wrapped if self.spec.user == "root" else f"sudo -n {wrapped}"

    def run(self, cmd: str, timeout: float = 60.0, check: bool = True, stdin: str | None = None) -> Result:
        import paramiko

        ch = self._open_session()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            ch.exec_command(self.wrap(cmd, timeout))
            if stdin is not None:
                ch.sendall(stdin.encode())
            ch.shutdown_write()
            pause = 0.0005
            while True:
                got = False
                while ch.recv_ready():
                    out += ch.recv(65536)
                    got = True
                while ch.recv_stderr_ready():
                    err += ch.recv_stderr(65536)
                    got = True
                if ch.exit_status_ready() and not ch.recv_ready() and not ch.recv_stderr_ready():
                    if ch.eof_received or ch.closed:
                        break
                if ch.closed and not ch.exit_status_ready():
                    raise self.fail(f"connection lost while running (not retried): {short_cmd(cmd)}")
                if time.monotonic() > deadline:
                    raise self.fail(f"command timed out after {timeout:g}s: {short_cmd(cmd)}")
                if not got:
                    time.sleep(pause)
                    pause = min(pause * 2, 0.02)
                else:
                    pause = 0.0005
            code = ch.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise self.fail(f"connection lost while running (not retried): {short_cmd(cmd)} ({e.__class__.__name__})") from None
        finally:
            ch.close()
        if code == -1:
            raise self.fail(f"connection lost while running (not retried): {short_cmd(cmd)}")
        res = Result(cmd, code, out.decode(errors="replace"), err.decode(errors="replace"))
        return self.checked(res, check)

    # ------------------------------------------------------------------- files
    def _sftp(self):
        import paramiko

        t = self._transport()
        try:
            return paramiko.SFTPClient.from_transport(t)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise self.fail(f"cannot open SFTP: {one_line(str(e)) or e.__class__.__name__}") from None

    def upload(self, local: str, remote: str) -> None:
        """Copy a local file to remote (written beside it, then renamed into place)."""
        if not os.path.isfile(local):
            raise self.fail(f"upload: no local file {local}")
        root = self.spec.user == "root"
        part = f"{remote}.part-{uuid.uuid4().hex[:8]}"
        # not root: SFTP writes as the login user, so stage in /tmp and copy as root (root-owned)
        staging = part if root else f"/tmp/etcdproof-upload-{uuid.uuid4().hex}"
        sftp = self._sftp()
        try:
            sftp.put(local, staging)
        except (OSError, EOFError) as e:
            raise self.fail(f"upload {local} -> {remote}: {getattr(e, 'strerror', None) or e}") from None
        finally:
            sftp.close()
        q = shlex.quote
        if root:
            self.run(f"mv -f -- {q(part)} {q(remote)}", timeout=60)
        else:
            self.run(f"cp -- {q(staging)} {q(part)} && mv -f -- {q(part)} {q(remote)}; s=$?; rm -f -- {q(staging)}; exit $s",
                     timeout=120)

    def download(self, remote: str, local: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
        source = remote
        if self.spec.user != "root":  # root-owned files: a copy the login user may read
            source = f"/tmp/etcdproof-download-{uuid.uuid4().hex}"
            self.run(f"cp -- {shlex.quote(remote)} {source} && chown {shlex.quote(self.spec.user)} {source}",
                     timeout=120)
        sftp = self._sftp()
        try:
            sftp.get(source, local)
        except FileNotFoundError:
            raise self.fail(f"download {remote}: no such file") from None
        except (OSError, EOFError) as e:
            raise self.fail(f"download {remote}: {getattr(e, 'strerror', None) or e}") from None
        finally:
            sftp.close()
            if source != remote:
                self.run(f"rm -f -- {source}", timeout=30, check=False)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class LocalRemote(ShellRemote):
    """This machine as a node (subprocess): the no-root loopback fallback, and tests.

    Commands run as the current user, without sudo; the node's address is only what its
    processes bind to.
    """

    def __init__(self, node: Node) -> None:
        self.spec = node
        self.node = node.name
        self.desc = f"{node.name} (local {node.ip})"

    def run(self, cmd: str, timeout: float = 60.0, check: bool = True, stdin: str | None = None) -> Result:
        try:
            p = subprocess.Popen(["sh", "-c", cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            raise self.fail(f"cannot run sh: {e.strerror}") from None
        try:
            out, err = p.communicate(stdin.encode() if stdin is not None else b"", timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.communicate()
            raise self.fail(f"command timed out after {timeout:g}s: {short_cmd(cmd)}") from None
        res = Result(cmd, p.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
        return self.checked(res, check)

    def upload(self, local: str, remote: str) -> None:
        if not os.path.isfile(local):
            raise self.fail(f"upload: no local file {local}")
        self.run(f"cp -f -- {shlex.quote(local)} {shlex.quote(remote)}", timeout=120)

    def download(self, remote: str, local: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
        res = self.run(f"cp -f -- {shlex.quote(remote)} {shlex.quote(local)}", timeout=120, check=False)
        if res.exit != 0:
            raise self.fail(f"download {remote}: {one_line(res.err) or 'failed'}")

    def close(self) -> None:
        pass
