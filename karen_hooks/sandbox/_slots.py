"""Slots: how many calls run at once, each with its own uid, cgroup and tmpfs work dir."""

from __future__ import annotations

import os
import sysconfig

from . import _host_layers

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _system_read_paths() -> list[str]:
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {_PKG_DIR}
    paths |= {"/usr/lib", "/lib", "/lib64", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache",
              "/etc/localtime", "/usr/share/zoneinfo", "/dev/urandom", "/dev/zero"}
    return sorted(p for p in paths if os.path.exists(p))


class _Slot:
    def __init__(self, index: int, uid: int, gid: int, cg: _host_layers.CgroupSlot | None) -> None:
        self.index = index
        self.uid = uid
        self.gid = gid
        self.cg = cg
        self.tmpfs = ""  # this slot's size-capped tmpfs; each call gets a fresh dir in it
        self.tmpfs_mb = 0



def probe_tmpfs(base: str, root: bool, uid: int) -> tuple[bool, str]:
    """Whether a size-capped tmpfs can be mounted for the work dirs, and a description."""
    if not root:
        return False, "host is not root: work dir size is not capped (only RLIMIT_FSIZE per file)"
    d = os.path.join(base, "probe")
    os.mkdir(d)
    try:
        _host_layers.mount_tmpfs(d, 1, uid, uid)
        _host_layers.umount(d)
        return True, "a size- and inode-capped tmpfs per slot, a fresh dir in it per call"
    except OSError as exc:
        return False, f"cannot mount a tmpfs work dir ({exc}); work dir size is not capped"
    finally:
        os.rmdir(d)


def slot_tmpfs(base: str, slot: _Slot, size_mb: int) -> None:
    """Mount (once) or resize the slot's tmpfs; it caps bytes and inodes of the work dir."""
    if not slot.tmpfs:
        path = os.path.join(base, f"slot{slot.index}")
        os.makedirs(path, exist_ok=True)
        _host_layers.mount_tmpfs(path, size_mb, 0, 0, mode=0o711)
        slot.tmpfs, slot.tmpfs_mb = path, size_mb
    elif slot.tmpfs_mb != size_mb:
        _host_layers.mount_tmpfs(slot.tmpfs, size_mb, 0, 0, mode=0o711, remount=True)
        slot.tmpfs_mb = size_mb


def private_slot_dir(base: str, index: int) -> str:
    """A slot's work dir root when the host is not root: an empty dir in the host's view,
    a capped tmpfs in the zygote's mount namespace (see ``_userns.unshare_user_net``)."""
    return os.path.join(base, f"slot{index}")
