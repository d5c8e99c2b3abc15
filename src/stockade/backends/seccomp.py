"""The seccomp filter bwrap installs (`--seccomp FD`): what namespaces and mounts cannot stop.

Classic BPF, assembled here from named constants. Default allow; refused with an errno (never
a silent kill, so tools report a clean error): nested namespaces, ptrace and cross-process
memory access, io_uring (it bypasses seccomp for the syscalls it performs), kernel keyrings,
bpf, perf, userfaultfd, mount and module APIs, terminal injection (TIOCSTI/TIOCLINUX), and,
with the network off, every socket family but unix, inet (own loopback only) and netlink —
AF_VSOCK is refused always, because it is not network-namespaced and reaches the host.
A foreign syscall ABI (i386 or x32 on x86_64) is refused outright.
"""

from __future__ import annotations

import errno
import functools
import os
import struct

# BPF opcodes (linux/filter.h)
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
RET_K = 0x06  # BPF_RET | BPF_K

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# struct seccomp_data offsets; args are u64, we compare their low 32 bits (little endian).
OFF_NR, OFF_ARCH = 0, 4


def arg_low(i: int) -> int:
    return 16 + 8 * i


X32_BIT = 0x40000000
NAMESPACE_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
)
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_VSOCK = 1, 2, 10, 16, 40

ARCHES = {
    # machine: (AUDIT_ARCH, syscall numbers)
    "x86_64": (
        0xC000003E,
        {
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
            "bpf": 321,
            "perf_event_open": 298,
            "userfaultfd": 323,
            "kexec_load": 246,
            "kexec_file_load": 320,
            "init_module": 175,
            "finit_module": 313,
            "delete_module": 176,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "setns": 308,
            "swapon": 167,
            "swapoff": 168,
            "reboot": 169,
            "acct": 163,
            "quotactl": 179,
            "syslog": 103,
            "name_to_handle_at": 303,
            "open_by_handle_at": 304,
            "clone": 56,
            "unshare": 272,
            "ioctl": 16,
            "socket": 41,
            "socketpair": 53,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
            "bpf": 280,
            "perf_event_open": 241,
            "userfaultfd": 282,
            "kexec_load": 104,
            "kexec_file_load": 294,
            "init_module": 105,
            "finit_module": 273,
            "delete_module": 106,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "setns": 268,
            "swapon": 224,
            "swapoff": 225,
            "reboot": 142,
            "acct": 89,
            "quotactl": 60,
            "syslog": 116,
            "name_to_handle_at": 264,
            "open_by_handle_at": 265,
            "clone": 220,
            "unshare": 97,
            "ioctl": 29,
            "socket": 198,
            "socketpair": 199,
        },
    ),
}
# Same number on every architecture (the unified table from 5.x on).
COMMON = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "mount_setattr": 442,
}
DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount2",
    "pivot_root",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "setns",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "syslog",
    "name_to_handle_at",
    "open_by_handle_at",
)

Insn = tuple[int, int | str, int | str, int]  # code, jt, jf, k; jumps may name a label


class Program:
    """A tiny assembler: jumps name labels, resolved (and range-checked) at the end."""

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


@functools.cache
def build_filter(*, network: bool) -> bytes:
    """The filter for this machine's architecture; `network` False also limits socket families."""
    machine = os.uname().machine
    if machine not in ARCHES:
        raise RuntimeError(f"no seccomp filter for architecture {machine!r}; refusing to run unfiltered")
    audit_arch, table = ARCHES[machine]
    nr = {**table, **COMMON}
    p = Program()
    p.load(OFF_ARCH)
    p.jump(JEQ_K, audit_arch, 0, "kill")
    p.load(OFF_NR)
    if machine == "x86_64":
        p.jump(JGE_K, X32_BIT, "eperm")
    p.jump(JEQ_K, nr["clone3"], "enosys")  # glibc falls back to clone, whose flags we can see
    p.jump(JEQ_K, nr["clone"], "namespaces")
    p.jump(JEQ_K, nr["unshare"], "namespaces")
    p.jump(JEQ_K, nr["ioctl"], "ioctl")
    p.jump(JEQ_K, nr["socket"], "socket")
    p.jump(JEQ_K, nr["socketpair"], "socket")
    for name in DENIED:
        p.jump(JEQ_K, nr[name], "eperm")
    p.ret(RET_ALLOW)

    p.label("namespaces")
    p.load(arg_low(0))
    p.jump(JSET_K, NAMESPACE_FLAGS, "eperm", "allow")

    p.label("ioctl")
    p.load(arg_low(1))  # the kernel truncates the command to 32 bits: compare only those
    p.jump(JEQ_K, TIOCSTI, "eperm")
    p.jump(JEQ_K, TIOCLINUX, "eperm", "allow")

    p.label("socket")
    p.load(arg_low(0))
    p.jump(JEQ_K, AF_VSOCK, "eafnosupport")
    if network:
        p.ret(RET_ALLOW)
    else:
        for family in (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK):
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
    p.label("kill")
    p.ret(RET_KILL_PROCESS)
    return p.assemble()
