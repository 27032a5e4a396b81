"""Removing a directory tree that a plugin built: however deep, without recursion or long paths."""

from __future__ import annotations

import itertools
import logging
import os

log = logging.getLogger("karen_hooks.sandbox")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: str) -> bool:
    """Remove ``path`` and everything under it; ``True`` if it is gone (or never was).

    A plugin decides what its work dir holds. A chain of thousands of nested
    directories makes ``shutil.rmtree`` (recursive in Python 3.11) raise
    RecursionError, and any path-based call fail with ENAMETOOLONG. Here every
    subdirectory's entries are lifted into ``path`` itself, by a rename relative to
    open directory descriptors (no path grows, one descriptor per level at most two),
    emptied directories are removed, and files unlinked, until nothing is left.
    Symlinks are removed, never followed. Call it only once nothing can write there.
    """
    # A plugin may have taken every permission from its dirs (chmod 000). Root ignores that, but
    # a host that is not root runs plugins as its own uid: give each dir back to its owner first.
    try:
        if not os.path.islink(path):
            os.chmod(path, 0o700)
        top = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.error("cannot remove %s: %s", path, exc)
        return False
    counter = itertools.count()
    try:
        while True:
            with os.scandir(top) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            if not entries:
                break
            taken = {name for name, _ in entries}
            for name, is_dir in entries:
                if not is_dir:
                    os.unlink(name, dir_fd=top)
                    continue
                os.chmod(name, 0o700, dir_fd=top)  # a dir (not a link: is_dir above did not follow)
                sub = os.open(name, _DIR_FLAGS, dir_fd=top)
                try:
                    with os.scandir(sub) as it:
                        inner_entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
                    inner = [n for n, _ in inner_entries]
                    for child, child_is_dir in inner_entries:
                        if child_is_dir:  # moving a dir to another parent needs write access to it ('..')
                            os.chmod(child, 0o700, dir_fd=sub)
                        lifted = f".karen-lifted-{next(counter)}"
                        while lifted in taken:
                            lifted = f".karen-lifted-{next(counter)}"
                        taken.add(lifted)
                        os.rename(child, lifted, src_dir_fd=sub, dst_dir_fd=top)
                finally:
                    os.close(sub)
                if not inner:
                    os.rmdir(name, dir_fd=top)
    except OSError as exc:
        log.error("cannot remove %s: %s", path, exc)
        return False
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error("cannot remove %s: %s", path, exc)
        return False
    return True
