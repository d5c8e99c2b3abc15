"""The seccomp filter bwrap installs (`--seccomp FD`): what namespaces and mounts cannot stop.

Classic BPF, assembled here from named constants. Default allow; refused with an errno (never
a silent kill, so tools report a clean error): nested namespaces, ptrace and cross-process
memory access, io_uring (it bypasses seccomp for the syscalls it performs), kernel keyrings,
bpf, perf, userfaultfd, mount and module APIs, terminal injection (TIOCSTI/TIOCLINUX), and,
with the network off, every socket family but unix, inet (own loopback only) and netlink —
AF_VSOCK is refused always, because it is not network-namespaced and reaches the host.
A foreign syscall ABI (i386 on x86_64) kills the process; x32 syscalls get EPERM.
"""

from __future__ import annotations

import errno
import functools
import os
import struct

# BPF opcodes (linux/filter.h)
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = seccomp_data[k]
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K (unsigned)
JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K: jump if A & k
RET_K = 0x06  # BPF_RET | BPF_K

# Return values (linux/seccomp.h); the low 16 bits of RET_ERRNO carry the errno.
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6].
OFF_NR, OFF_ARCH = 0, 4


def arg_low(i: int) -> int:
    """Offset of the low 32 bits of args[i] (both supported arches are little endian)."""
    return 16 + 8 * i


AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (
    CLONE_NEWTIME
    | CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)

TIOCSTI, TIOCLINUX = 0x5412, 0x541C
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_VSOCK = 1, 2, 10, 16, 40
OFFLINE_FAMILIES = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)

# Refused with EPERM, in this order. Syscall numbers below (verified against kernel headers).
DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "userfaultfd", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "setns", "swapon", "swapoff", "reboot", "acct", "quotactl",
    "quotactl_fd", "syslog", "lookup_dcookie", "name_to_handle_at", "open_by_handle_at",
)  # fmt: skip

# The syscalls newer than 5.1 share one number on every architecture.
COMMON = dict(
    io_uring_setup=425, io_uring_enter=426, io_uring_register=427, open_tree=428, move_mount=429,
    fsopen=430, fsconfig=431, fsmount=432, fspick=433, clone3=435, mount_setattr=442, quotactl_fd=443,
    fchmodat2=452, setxattrat=463, removexattrat=466,
)  # fmt: skip

# Metadata changes Landlock does not mediate (any file the user owns, anywhere). With the
# launcher its guard judges them; without it (no C compiler) they are refused outright.
METADATA = (
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "utime",
    "utimes", "futimesat", "utimensat", "setxattr", "lsetxattr", "fsetxattr", "removexattr",
    "lremovexattr", "fremovexattr", "setxattrat", "removexattrat",
)  # fmt: skip
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER = 1, 8
FS_IOC_SETFLAGS, FS_IOC_FSSETXATTR = 0x40086602, 0x401C5820  # chattr: Landlock does not see it

ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    # machine(): (AUDIT_ARCH, arch-specific syscall numbers)
    "x86_64": (AUDIT_ARCH_X86_64, dict(
        ptrace=101, process_vm_readv=310, process_vm_writev=311, keyctl=250, add_key=248,
        request_key=249, bpf=321, perf_event_open=298, userfaultfd=323, kexec_load=246,
        kexec_file_load=320, init_module=175, finit_module=313, delete_module=176, mount=165,
        umount2=166, pivot_root=155, setns=308, swapon=167, swapoff=168, reboot=169, acct=163,
        quotactl=179, syslog=103, lookup_dcookie=212, name_to_handle_at=303,
        open_by_handle_at=304, clone=56, unshare=272, ioctl=16, socket=41, socketpair=53,
        setsid=112, setpgid=109, seccomp=317,
        chmod=90, fchmod=91, chown=92, fchown=93, lchown=94, utime=132, utimes=235, futimesat=261,
        fchmodat=268, fchownat=260, utimensat=280, setxattr=188, lsetxattr=189, fsetxattr=190,
        removexattr=197, lremovexattr=198, fremovexattr=199,
    )),
    "aarch64": (AUDIT_ARCH_AARCH64, dict(
        ptrace=117, process_vm_readv=270, process_vm_writev=271, keyctl=219, add_key=217,
        request_key=218, bpf=280, perf_event_open=241, userfaultfd=282, kexec_load=104,
        kexec_file_load=294, init_module=105, finit_module=273, delete_module=106, mount=40,
        umount2=39, pivot_root=41, setns=268, swapon=224, swapoff=225, reboot=142, acct=89,
        quotactl=60, syslog=116, lookup_dcookie=18, name_to_handle_at=264,
        open_by_handle_at=265, clone=220, unshare=97, ioctl=29, socket=198, socketpair=199,
        setsid=157, setpgid=154, seccomp=277,
        fchmod=52, fchown=55, fchmodat=53, fchownat=54, utimensat=88, setxattr=5, lsetxattr=6,
        fsetxattr=7, removexattr=14, lremovexattr=15, fremovexattr=16,
    )),
}  # fmt: skip

Insn = tuple[int, int | str, int | str, int]  # code, jt, jf, k; jumps may name a label


class Program:
    """A tiny assembler: jumps name labels, resolved (and range-checked: 8-bit) at the end."""

    def __init__(self) -> None:
        self.insns: list[Insn] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.insns)

    def load(self, offset: int) -> None:
        self.insns.append((LD_W_ABS, 0, 0, offset))

    def jump(self, code: int, k: int, jt: int | str, jf: int | str = 0) -> None:
        self.insns.append((code, jt, jf, k))

    def ret(self, value: int) -> None:
        self.insns.append((RET_K, 0, 0, value))

    def assemble(self) -> bytes:
        out = bytearray()
        for i, (code, jt, jf, k) in enumerate(self.insns):
            offsets = []
            for j in (jt, jf):
                off = self.labels[j] - i - 1 if isinstance(j, str) else j
                if not 0 <= off <= 255:
                    raise RuntimeError(f"seccomp jump out of range at instruction {i}")
                offsets.append(off)
            out += struct.pack("=HBBI", code, offsets[0], offsets[1], k)
        return bytes(out)


def machine_name() -> str:
    """uname's machine field (platform.machine() would cost an import on every CLI start)."""
    return os.uname().machine


@functools.cache
def build_filter(*, network: bool, shared_host: bool = False, refuse_metadata: bool = False) -> bytes:
    """Classic-BPF seccomp program (array of struct sock_filter, 8 bytes each, native endian) in
    the format `bwrap --seccomp FD` reads. `network` False also limits the socket families.

    `shared_host` is for a sandbox with no namespaces of its own (Landlock): the command shares
    the host's network stack and session, so new unix sockets are refused (Landlock cannot see a
    connect() to a host socket; socketpair stays allowed), with the network off every other
    family but unix pairs is refused too (no private loopback to keep), and setsid() and
    setpgid() are refused, so every process stays in the one process group stockade kills.
    There, a seccomp filter with a new listener is refused too (it would take notifications
    before the launcher's guard), and so are chattr's ioctls. `refuse_metadata` refuses chmod,
    chown, utimes and xattr changes (the preexec path, which has no guard to judge them).
    """
    machine = machine_name()
    if machine not in ARCHES:
        raise RuntimeError(f"no seccomp filter for architecture {machine!r}; refusing to run unfiltered")
    audit_arch, table = ARCHES[machine]
    nr = {**table, **COMMON}
    p = Program()
    p.load(OFF_ARCH)
    p.jump(JEQ_K, audit_arch, 0, "kill")  # syscall numbers mean nothing under another ABI
    p.load(OFF_NR)
    if machine == "x86_64":
        p.jump(JGE_K, X32_SYSCALL_BIT, "eperm")  # x32 ABI (as libseccomp: every nr >= the bit)
    p.jump(JEQ_K, nr["clone3"], "enosys")  # its flags sit in memory; glibc falls back to clone
    p.jump(JEQ_K, nr["clone"], "namespaces")
    p.jump(JEQ_K, nr["unshare"], "namespaces")
    p.jump(JEQ_K, nr["ioctl"], "ioctl")
    p.jump(JEQ_K, nr["socket"], "socket")
    p.jump(JEQ_K, nr["socketpair"], "socketpair" if shared_host else "socket")
    for name in DENIED:
        p.jump(JEQ_K, nr[name], "eperm")
    if shared_host:
        p.jump(JEQ_K, nr["setsid"], "eperm")
        p.jump(JEQ_K, nr["setpgid"], "eperm")
        p.jump(JEQ_K, nr["seccomp"], "seccomp")
    if refuse_metadata:
        for name in METADATA:
            if name in nr:
                p.jump(JEQ_K, nr[name], "eperm")
    p.ret(RET_ALLOW)

    if shared_host:
        p.label("seccomp")
        p.load(arg_low(0))
        p.jump(JEQ_K, SECCOMP_SET_MODE_FILTER, 0, "allow")
        p.load(arg_low(1))
        p.jump(JSET_K, SECCOMP_FILTER_FLAG_NEW_LISTENER, "eperm", "allow")

    p.label("namespaces")  # clone and unshare both take the flags in arg0 on these arches
    p.load(arg_low(0))
    p.jump(JSET_K, NAMESPACE_FLAGS, "eperm", "allow")

    p.label("ioctl")
    p.load(arg_low(1))  # the kernel truncates the command to 32 bits: compare only those
    p.jump(JEQ_K, TIOCSTI, "eperm")
    if shared_host:
        p.jump(JEQ_K, FS_IOC_SETFLAGS, "eperm")
        p.jump(JEQ_K, FS_IOC_FSSETXATTR, "eperm")
    p.jump(JEQ_K, TIOCLINUX, "eperm", "allow")

    p.label("socket")
    p.load(arg_low(0))  # the address family (int)
    p.jump(JEQ_K, AF_VSOCK, "eafnosupport")
    if shared_host:
        p.jump(JEQ_K, AF_UNIX, "eacces")
        if not network:
            p.ret(RET_ERRNO | errno.EAFNOSUPPORT)
        p.ret(RET_ALLOW)
        p.label("socketpair")
        p.load(arg_low(0))
        p.jump(JEQ_K, AF_UNIX, "allow", "eafnosupport")
    elif network:
        p.ret(RET_ALLOW)
    else:
        for family in OFFLINE_FAMILIES:
            p.jump(JEQ_K, family, "allow")
        p.ret(RET_ERRNO | errno.EAFNOSUPPORT)

    p.label("allow")
    p.ret(RET_ALLOW)
    p.label("eperm")
    p.ret(RET_ERRNO | errno.EPERM)
    p.label("enosys")
    p.ret(RET_ERRNO | errno.ENOSYS)
    p.label("eafnosupport")
    p.ret(RET_ERRNO | errno.EAFNOSUPPORT)
    p.label("eacces")
    p.ret(RET_ERRNO | errno.EACCES)
    p.label("kill")
    p.ret(RET_KILL_PROCESS)
    return p.assemble()
