"""A deliberately hostile old-format directory plugin: ``run(params, ctx)`` dispatches on ``action``.

Every action attacks the host or the sandbox; the tests assert containment.
"""

import builtins
import json
import os
import signal
import socket
import sys
import threading
import time

STATE = {"calls": 0}


def _ok(**kw):
    return {"ok": True, **kw}


def run(params, ctx):
    action = params.get("action", "echo")
    STATE["calls"] += 1
    fn = globals()["act_" + action]
    return fn(params, ctx)


def act_echo(p, ctx):
    print("to stdout")
    print("to stderr", file=sys.stderr)
    return {
        "params": p,
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "user": ctx.user_id,
        "tenant": ctx.tenant_id,
        "calls": STATE["calls"],
        "json_dumps_ok": json.dumps({"a": 1}) == '{"a": 1}',
        "print_is_builtin": builtins.print.__module__ == "builtins" if hasattr(builtins.print, "__module__") else True,
        "pid": os.getpid(),
        "sid": os.getsid(0),
    }


def act_fail(p, ctx):
    print("about to fail", file=sys.stderr)
    raise ValueError("boom from plugin")


def act_not_json(p, ctx):
    return {"x": object()}


def act_huge_alloc(p, ctx):
    b = bytearray(p.get("mb", 4096) << 20)
    return len(b)


def act_grow(p, ctx):
    chunks = []
    while True:
        chunks.append(bytearray(8 << 20))
        for i in range(0, len(chunks[-1]), 4096):
            chunks[-1][i] = 1


def act_memfd_fill(p, ctx):
    """Memory no process maps: anonymous files (memfd), ``mb_each`` MiB in each, until refused."""
    fds, chunk = [], b"x" * (1 << 20)
    while len(fds) * p["mb_each"] < p.get("stop_mb", 1 << 20):
        fd = os.memfd_create("fill")  # an OSError (EMFILE: the open files limit) ends the call
        fds.append(fd)
        for _ in range(p["mb_each"]):
            os.write(fd, chunk)
    return len(fds) * p["mb_each"]


def act_busy(p, ctx):
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    x = 0
    while True:
        x += 1


def act_sleep(p, ctx):
    time.sleep(p.get("seconds", 60))
    return "woke"


def act_fork_bomb(p, ctx):
    pids = []
    try:
        for _ in range(p.get("n", 10_000)):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            pids.append(pid)
    finally:
        print(f"forked {len(pids)}", file=sys.stderr)
    return len(pids)


def act_fork_and_sleep(p, ctx):
    """A call that is still running, with a child of its own, when the test kills the zygote.

    With ``setsid`` the child leaves the call's session first; either way it writes its pid
    to ``child.pid`` in the work dir, for the test to find.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        if p.get("setsid"):
            os.setsid()
        os.write(w, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(r, 1)  # the child is where it should be
    with open("child.pid", "w") as fh:
        fh.write(str(pid))
    time.sleep(60)
    return "woke"


def act_fork_bomb_hold(p, ctx):
    """Fork until refused, then keep every child for ``hold`` seconds (``bomb.done`` in the work dir says when)."""
    n = 0
    try:
        while n < 10_000:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
    except OSError:
        pass
    with open("bomb.done", "w") as fh:
        fh.write(str(n))
    time.sleep(p.get("hold", 3))
    return n


def act_fork_n(p, ctx):
    pids = []
    for _ in range(p["n"]):
        pid = os.fork()
        if pid == 0:
            time.sleep(0.5)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return len(pids)


def act_thread_bomb(p, ctx):
    threads = []
    ev = threading.Event()
    for _ in range(p.get("n", 10_000)):
        t = threading.Thread(target=ev.wait, daemon=True)
        t.start()
        threads.append(t)
    return len(threads)


def act_daemon(p, ctx):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        pid2 = os.fork()
        if pid2 == 0:
            os.close(r)
            for fd in (0, 1, 2):
                os.close(fd)
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            while True:
                time.sleep(1)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    daemon = int(os.read(r, 100))
    return {"daemon": daemon}


def act_files(p, ctx):
    fds = []
    while True:
        fds.append(os.open("/dev/null", os.O_RDONLY))


def act_big_file(p, ctx):
    with open("big.bin", "wb") as fh:
        for _ in range(p.get("mb", 1024)):
            fh.write(b"\0" * (1 << 20))
    return "wrote"


def act_many_files(p, ctx):
    n = 0
    for i in range(p.get("n", 100_000)):
        with open(f"f{i}.txt", "wb") as fh:
            fh.write(b"x" * p.get("size", 8192))
        n += 1
    return n


def act_stdout_flood(p, ctx):
    chunk = "x" * (1 << 20)
    for _ in range(p.get("mb", 1024)):
        sys.stdout.write(chunk)
    return "done"


def act_stderr_flood(p, ctx):
    chunk = b"e" * (1 << 20)
    for _ in range(p.get("mb", 1024)):
        os.write(2, chunk)
    return "done"


def act_big_reply(p, ctx):
    return "y" * (p.get("mb", 64) << 20)


def act_forge_reply(p, ctx):
    os.write(3, b"\x00\x00\x00\x05{bad}")
    os._exit(0)


def act_forge_oversized_header(p, ctx):
    os.write(3, b"\xff\xff\xff\xff")
    time.sleep(5)


def act_fds(p, ctx):
    import fcntl
    import stat

    found = {}
    for fd in range(256):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "fifo" if stat.S_ISFIFO(st.st_mode) else (
            "sock" if stat.S_ISSOCK(st.st_mode) else "chr" if stat.S_ISCHR(st.st_mode) else "other")
        found[fd] = {"kind": kind, "o_path": bool(flags & getattr(os, "O_PATH", 0o10000000))}
    return found


def act_forge_deep(p, ctx):
    # a frame within the size cap that would blow the host's recursion limit
    body = b'{"op": "result", "ok": true, "result": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    os.write(3, len(body).to_bytes(4, "big") + body)
    time.sleep(5)


def act_memory_flood(p, ctx):
    errors = 0
    for _ in range(1500):
        try:
            ctx.memory.read("x")
        except Exception:  # noqa: BLE001
            errors += 1
    return errors


def act_memory_fill(p, ctx):
    """Write ``n`` records of ``kb`` KiB each to ctx.memory (into the host's database); report how many were taken."""
    stored, refused = 0, ""
    for i in range(p["n"]):
        try:
            ctx.memory.write(f"fill {i}", "x" * (p["kb"] << 10))
            stored += 1
        except Exception as exc:  # noqa: BLE001
            refused = str(exc)
    return {"stored": stored, "refused": refused}


def act_forge_limit(p, ctx):
    # a valid frame that lies about the result kind
    body = json.dumps({"op": "result", "ok": False, "kind": "limit", "limit": "not-a-limit"}).encode()
    os.write(3, len(body).to_bytes(4, "big") + body)
    os._exit(0)


def _try(fn):
    try:
        return {"ok": True, "value": fn()}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _read(path, n=200):
    with open(path, "rb") as fh:
        return fh.read(n).decode("latin-1")


def act_secrets(p, ctx):
    host = p["host_pid"]
    out = {"env": dict(os.environ)}
    out["proc_environ"] = _try(lambda: _read(f"/proc/{host}/environ", 100000))
    out["proc_mem"] = _try(lambda: _read(f"/proc/{host}/mem"))
    out["proc_cmdline"] = _try(lambda: _read(f"/proc/{host}/cmdline"))
    out["shadow"] = _try(lambda: _read("/etc/shadow"))
    out["passwd"] = _try(lambda: _read("/etc/passwd"))
    return out


def act_escape_write(p, ctx):
    target = p["target"]  # an absolute path outside the work dir
    out = {}

    def w(path):
        with open(path, "w") as fh:
            fh.write("pwned")
        return path

    out["absolute"] = _try(lambda: w(target))
    rel = os.path.relpath(target, os.getcwd())
    out["dotdot"] = _try(lambda: w(rel))

    def via_symlink():
        os.symlink(os.path.dirname(target), "link")
        return w(os.path.join("link", os.path.basename(target)))

    out["symlink"] = _try(via_symlink)
    out["inside"] = _try(lambda: w("inside.txt"))
    return out


def act_network(p, ctx):
    out = {}

    def tcp():
        s = socket.create_connection(("127.0.0.1", p["tcp_port"]), timeout=1)
        s.sendall(b"pwned")
        s.close()

    def udp():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"pwned", ("127.0.0.1", p["udp_port"]))
        s.close()

    def unix():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(p["unix_path"])
        s.sendall(b"pwned")
        s.close()

    out["tcp"] = _try(tcp)
    out["udp"] = _try(udp)
    out["unix"] = _try(unix)
    return out


def act_kill_parent(p, ctx):
    out = {"ppid": os.getppid()}
    out["kill_ppid"] = _try(lambda: os.kill(os.getppid(), signal.SIGKILL))
    out["kill_host"] = _try(lambda: os.kill(p["host_pid"], signal.SIGKILL))
    return out


def act_caps(p, ctx):
    """This process's capabilities, as the kernel tells the process itself (capget, PR_CAPBSET_READ)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # two halves of effective, permitted, inheritable
    if libc.capget(header, data) != 0:
        return {"error": os.strerror(ctypes.get_errno())}
    eff, prm, inh = (data[i] | data[i + 3] << 32 for i in range(3))
    bnd = sum(1 << c for c in range(64) if libc.prctl(23, ctypes.c_ulong(c), 0, 0, 0) == 1)  # PR_CAPBSET_READ
    return {"CapEff": eff, "CapPrm": prm, "CapInh": inh, "CapBnd": bnd, "pid": os.getpid(),
            "proc_status": _try(lambda: _read("/proc/self/status", 100000))}


def act_monkeypatch(p, ctx):
    builtins.print = lambda *a, **k: None
    json.dumps = lambda *a, **k: "patched"
    builtins.open = None
    return "patched"


def act_segfault(p, ctx):
    import ctypes

    ctypes.string_at(0)


def act_memory(p, ctx):
    out = {}
    out["write"] = _try(lambda: ctx.memory.write("fav color", {"v": "blue"}))
    out["read"] = _try(lambda: ctx.memory.read("fav color", limit=3))
    out["other_tenant"] = _try(lambda: ctx.memory.read("x", tenant_id="other"))
    out["bad_method"] = _try(lambda: ctx.memory._call("purge_everything"))
    out["not_json"] = _try(lambda: ctx.memory.write("q", object()))
    out["attrs"] = sorted(a for a in vars(ctx.memory))
    return out


async def _async_part(p):
    import asyncio

    await asyncio.sleep(0)
    return {"async": True}


def act_async(p, ctx):
    return _async_part(p)


def act_counter(p, ctx):
    return STATE["calls"]


def act_new_namespaces(p, ctx):
    """Create namespaces with clone()/clone3() (unshare and setns are denied by name), then fork and start a thread."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    sigchld = 17
    flags = {"user": 0x10000000, "net": 0x40000000, "mount": 0x00020000, "pid": 0x20000000}

    class CloneArgs(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint64) for n in
                    ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls")]

    def attempt(syscall, *args):
        pid = libc.syscall(syscall, *args)
        if pid == 0:
            os._exit(0)
        if pid > 0:
            os.waitpid(pid, 0)
            return "created"
        return os.strerror(ctypes.get_errno())

    out = {}
    for name, flag in flags.items():
        out["clone " + name] = attempt(56, flag | sigchld, 0, 0, 0, 0)  # clone(2) on x86-64
        args = CloneArgs(flags=flag, exit_signal=sigchld)
        out["clone3 " + name] = attempt(435, ctypes.byref(args), ctypes.sizeof(args))
    # plain processes and threads still work (the filter looks at the flags, and libc falls back from clone3)
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    out["fork"] = os.WEXITSTATUS(os.waitpid(pid, 0)[1])
    t = threading.Thread(target=lambda: out.__setitem__("thread", "ran"))
    t.start()
    t.join()
    return out


def act_deep_result(p, ctx):
    """A result nested ``depth`` lists deep: a recursion bomb for whatever the host does with it."""
    x = 1
    for _ in range(p["depth"]):
        x = [x]
    return x


def act_sysv_ipc(p, ctx):
    """System V shared memory, message queues and semaphores outlive every process (and the host): try each."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    out = {}
    for name, call in (("shmget", lambda: libc.shmget(0x4B41524E, 1 << 20, 0o1000 | 0o666)),
                       ("msgget", lambda: libc.msgget(0x4B41524E, 0o1000 | 0o666)),
                       ("semget", lambda: libc.semget(0x4B41524E, 1, 0o1000 | 0o666))):
        ret = call()
        out[name] = "created" if ret >= 0 else os.strerror(ctypes.get_errno())
    out["mq_open"] = _posix_mq(libc)
    return out


def _posix_mq(libc):
    import ctypes

    libc.mq_open.restype = ctypes.c_int
    fd = libc.mq_open(b"/karen-hostile", os.O_CREAT | os.O_RDWR, 0o666, None)
    if fd >= 0:
        libc.mq_unlink(b"/karen-hostile")
        return "created"
    return os.strerror(ctypes.get_errno())


def act_memory_burst(p, ctx):
    """Send ``n`` memory calls in one write and never read an answer; then sleep ``sleep`` seconds."""
    body = json.dumps({"op": "memory", "method": "read", "args": ["x"], "kwargs": {}}).encode()
    frame = len(body).to_bytes(4, "big") + body
    os.write(3, frame * p["n"])
    time.sleep(p.get("sleep", 0))
    return "not reached"


def act_memory_big_read(p, ctx):
    try:
        return {"value": len(ctx.memory.read("x"))}
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)}


def act_deep_dirs(p, ctx):
    """Directories nested ``depth`` deep in the work dir (a recursive cleanup runs out of stack on them)."""
    n = 0
    try:
        for _ in range(p.get("depth", 3000)):
            os.mkdir("d")
            os.chdir("d")
            n += 1
    except OSError as exc:
        return {"depth": n, "error": str(exc)}
    if p.get("sleep"):
        time.sleep(p["sleep"])
    return {"depth": n}


def act_background_burner(p, ctx):
    """Leave work running after the call: a thread that burns CPU and one that keeps forking CPU burners."""

    def spawner():
        while True:
            pid = os.fork()
            if pid == 0:
                t = time.monotonic()
                while time.monotonic() - t < 0.3:
                    pass
                os._exit(0)
            os.waitpid(pid, 0)

    def burn():
        while True:
            pass

    for target in (spawner, burn):
        threading.Thread(target=target, daemon=True).start()
    return {"pid": os.getpid(), "calls": STATE["calls"]}


def act_unix_dgram(p, ctx):
    """socket() is denied, but a socketpair's datagram socket can still address any socket path."""
    out = {}
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    c.send(b"ping")  # the pair itself still works (asyncio's self-pipe is one)
    out["pair"] = d.recv(10).decode()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for name, attempt in (("sendto", lambda: a.sendto(b"pwned", p["path"])),
                          ("connect", lambda: a.connect(p["path"])),
                          ("sendmsg", lambda: a.sendmsg([b"pwned"], [], 0, p["path"]))):
        try:
            attempt()
            out[name] = "sent"
        except OSError as exc:
            out[name] = exc.strerror
    return out


def act_host_views(p, ctx):
    """Views of the host that Landlock's /proc block does not cover: pidfds, the mount table, file watches."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    out = {}
    for name, nr, args in (("pidfd_open", 434, (1, 0)), ("statmount", 457, (0, 0, 0, 0)),
                           ("listmount", 458, (0, 0, 0, 0)), ("inotify_init1", 294, (0,)),
                           ("fanotify_init", 300, (0, 0))):
        ret = libc.syscall(nr, *args)
        out[name] = "allowed" if ret >= 0 else os.strerror(ctypes.get_errno())
    return out


def act_open_door(p, ctx):
    """Make this call's work dir writable by every uid, then wait (for a call in another slot to walk in)."""
    os.chmod(".", 0o777)
    time.sleep(p.get("sleep", 3))
    return sorted(os.listdir("."))


def act_walk_in(p, ctx):
    try:
        with open(os.path.join(p["dir"], "from_another_slot"), "w") as fh:
            fh.write("hi")
        return "wrote"
    except OSError as exc:
        return exc.strerror


def act_wake_on_pause(p, ctx):
    """A child that keeps sending its (warm) parent SIGCONT, so that a pause between calls does not hold."""
    parent = os.getpid()
    if os.fork() == 0:
        while True:
            os.kill(parent, signal.SIGCONT)
    return {"pid": parent, "calls": STATE["calls"]}


def act_lock_work_dir(p, ctx):
    """Take every permission from the work dir and a subdir (root's cleanup ignores that; the host's uid does not)."""
    os.makedirs("a/b")
    with open("a/b/f", "w") as fh:
        fh.write("x")
    os.chmod("a/b", 0o500)
    os.chmod("a", 0)
    os.chmod(".", 0)
    return "locked"
