/* guard: the launcher's supervisor answers the file syscalls that Landlock cannot judge.
 *
 * Landlock grants cover everything beneath a directory, so it cannot keep one entry narrower
 * inside a writable directory (protected .git/config in a writable workspace, a denied .env),
 * and it does not mediate chmod, chown, utimes or xattrs at all. The command therefore runs
 * with a seccomp filter that turns those syscalls into user notifications (SECCOMP_RET_USER_NOTIF)
 * and this code, in the supervisor, performs them on the command's behalf:
 *
 *   - The path is copied once from the command's memory and resolved here, component by
 *     component for the last one, into O_PATH fds; the decision is made on inodes, and the
 *     operation is then done on those same fds. Nothing is ever continued (SECCOMP_USER_NOTIF_
 *     FLAG_CONTINUE would let the command swap the path after the check).
 *   - The decision: the nearest entry at or above the object, by inode, walking ".." up from
 *     the directory (the Plan's rule "most specific wins"). Guarded entries (narrower than the
 *     writable directory around them) refuse writes, and reads too when denied; metadata
 *     changes need a Plan write entry. A protected entry and every directory above one is
 *     pinned: it cannot be renamed or removed, so a fresh .git cannot be put in its place.
 *   - The supervisor itself runs under the same Landlock ruleset (plus /proc, to read a
 *     command's umask), so an operation it performs is still checked by the kernel against the
 *     Plan's grants; the guard only adds what Landlock cannot express. It holds no capability.
 *   - Opens are answered with SECCOMP_IOCTL_NOTIF_ADDFD (the fd lands in the command
 *     atomically with the reply). The filter waits killably, so a signal cannot make the
 *     command retry an operation that was already done.
 *
 * Requests are handled one at a time, so the command cannot rename things between a check
 * and the operation (its renames come through here too). An open that could block (a FIFO)
 * is finished in a forked helper so one reader cannot stall the others.
 */
#define _GNU_SOURCE
#include "guard.h"
#include "fdpass.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <utime.h>

#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452 /* new syscalls share one number on every architecture */
#endif
#ifndef SYS_setxattrat
#define SYS_setxattrat 463
#endif
#ifndef SYS_removexattrat
#define SYS_removexattrat 466
#endif
#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif
#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#else
#error "no seccomp arch for this machine"
#endif

/* Landlock rights (linux/landlock.h) the entries carry. */
#define LL_READ_FILE (1u << 2)

/* ---- entries: inode -> what the Plan says there ---------------------------------------- */

struct ent {
    dev_t dev;
    ino_t ino;
    char kind;       /* 'R' rule, 'W' Plan write entry, 'G' guarded, 0: only pinned */
    char pinned;     /* cannot be renamed or removed */
    unsigned rights; /* Landlock rights granted there (G: READ_* or 0 for deny) */
};

struct name_rule { /* a guarded path that did not exist at launch: its name in its parent */
    dev_t dev;
    ino_t ino;
    char name[NAME_MAX + 1];
    struct ent ent;
};

static struct ent *table;
static size_t table_size; /* a power of two, at least twice the entries */
static struct name_rule *names;
static size_t n_names;
static int mediate_writes, mediate_reads;

static size_t slot(dev_t dev, ino_t ino) {
    unsigned long long h = (unsigned long long)ino * 0x9E3779B97F4A7C15ull ^ (unsigned long long)dev;
    return (size_t)(h ^ (h >> 29)) & (table_size - 1);
}

static struct ent *lookup(dev_t dev, ino_t ino, int create) {
    for (size_t i = slot(dev, ino);; i = (i + 1) & (table_size - 1)) {
        struct ent *e = &table[i];
        if (e->dev == dev && e->ino == ino && (e->kind || e->pinned)) return e;
        if (!e->kind && !e->pinned) {
            if (!create) return NULL;
            e->dev = dev;
            e->ino = ino;
            return e;
        }
    }
}

static int add_entry(char kind, unsigned rights, const char *path) {
    struct stat st;
    if (kind == 'P') {
        if (stat(path, &st) == 0) lookup(st.st_dev, st.st_ino, 1)->pinned = 1;
        return 0;
    }
    if (stat(path, &st) == 0) {
        struct ent *e = lookup(st.st_dev, st.st_ino, 1);
        /* One inode under two paths (a bind or a hard link): the narrower entry wins. */
        if (!e->kind || kind == 'G' || (e->kind != 'G' && rights < e->rights)) {
            e->kind = kind;
            e->rights = rights;
        }
        if (kind == 'G') { /* the guarded entry and every directory above it stay in place */
            e->pinned = 1;
            char up[PATH_MAX];
            snprintf(up, sizeof up, "%s", path);
            for (char *cut; (cut = strrchr(up, '/')) != NULL;) {
                *(cut == up ? cut + 1 : cut) = '\0';
                if (stat(up, &st) == 0) lookup(st.st_dev, st.st_ino, 1)->pinned = 1;
                if (cut == up) break;
            }
        }
        return 0;
    }
    if (kind != 'G') return 0; /* a grant on nothing grants nothing */
    /* A guarded name that does not exist: refuse creating it in its (existing) parent. */
    const char *base = strrchr(path, '/');
    char parent[PATH_MAX];
    if (!base || strlen(base + 1) > NAME_MAX) return EINVAL;
    snprintf(parent, sizeof parent, "%.*s", base == path ? 1 : (int)(base - path), path);
    if (stat(parent, &st) != 0) return ENOENT; /* the Python side refuses such Plans first */
    struct name_rule *more = realloc(names, (n_names + 1) * sizeof *names);
    if (!more) return ENOMEM;
    names = more;
    struct name_rule *r = &names[n_names++];
    r->dev = st.st_dev;
    r->ino = st.st_ino;
    snprintf(r->name, sizeof r->name, "%s", base + 1);
    r->ent = (struct ent){st.st_dev, st.st_ino, 'G', 1, rights};
    return 0;
}

int guard_load(int fd, const char **what) {
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    *what = "guard entries";
    if (!buf) return ENOMEM;
    for (;;) {
        if (len == cap) {
            char *more = realloc(buf, cap *= 2);
            if (!more) return ENOMEM;
            buf = more;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno;
        if (n == 0) break;
        len += (size_t)n;
    }
    close(fd);
    size_t count = 0;
    for (size_t i = 0; i < len; i++) count += buf[i] == '\0';
    for (table_size = 16; table_size < count; table_size <<= 1) {
    }
    table_size <<= 1;
    table = calloc(table_size, sizeof *table);
    if (!table) return ENOMEM;
    for (size_t i = 0; i < len;) { /* KIND \0 RIGHTS \0 PATH \0 */
        const char *kind = buf + i, *rights, *path;
        rights = memchr(kind, '\0', len - i);
        if (!rights || ++rights >= buf + len) return EINVAL;
        path = memchr(rights, '\0', (size_t)(buf + len - rights));
        if (!path || ++path >= buf + len) return EINVAL;
        const char *end = memchr(path, '\0', (size_t)(buf + len - path));
        if (!end || strlen(kind) != 1 || !strchr("RWGP", kind[0]) || path[0] != '/') return EINVAL;
        int err = add_entry(kind[0], (unsigned)strtoul(rights, NULL, 10), path);
        if (err) return err;
        if (kind[0] == 'G') mediate_writes = 1;
        if (kind[0] == 'G' && !(strtoul(rights, NULL, 10) & LL_READ_FILE)) mediate_reads = 1;
        i = (size_t)(end - buf) + 1;
    }
    free(buf);
    return 0;
}

/* ---- the notify filter ------------------------------------------------------------------ */

#define MAX_INSNS 160
static struct sock_filter prog[MAX_INSNS];
static unsigned n_insns;
enum { L_ALLOW = 1000, L_NOTIFY, L_ENOSYS, L_OPEN1, L_OPEN2 }; /* jump targets */
static unsigned label_at[5];
static unsigned fix_jt[MAX_INSNS];

static void emit(unsigned short code, unsigned k, unsigned target) {
    prog[n_insns] = (struct sock_filter){code, 0, 0, k};
    fix_jt[n_insns++] = target; /* 0: none; a label: jt goes there */
}
static void mark(unsigned label) { label_at[label - L_ALLOW] = n_insns; }
static void notify_on(long nr) { emit(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, L_NOTIFY); }

static const long META[] = {
#ifdef SYS_chmod
    SYS_chmod, SYS_chown, SYS_lchown, SYS_utime, SYS_utimes, SYS_futimesat,
#endif
    SYS_fchmod, SYS_fchmodat, SYS_fchmodat2, SYS_fchown, SYS_fchownat, SYS_utimensat,
    SYS_setxattr, SYS_lsetxattr, SYS_fsetxattr, SYS_removexattr, SYS_lremovexattr,
    SYS_fremovexattr,
};
static const long NAMESPACE[] = {
#ifdef SYS_mkdir
    SYS_creat, SYS_mkdir, SYS_mknod, SYS_symlink, SYS_link, SYS_unlink, SYS_rmdir, SYS_rename,
#endif
    SYS_mkdirat, SYS_mknodat, SYS_symlinkat, SYS_linkat, SYS_unlinkat, SYS_renameat,
    SYS_renameat2, SYS_truncate,
};

static void open_flags_check(unsigned arg) {
    emit(BPF_LD | BPF_W | BPF_ABS, (unsigned)offsetof(struct seccomp_data, args[arg]), 0);
    emit(BPF_JMP | BPF_JSET | BPF_K, O_PATH, L_ALLOW); /* no access: only names the file */
    if (mediate_reads) emit(BPF_JMP | BPF_JA, L_NOTIFY, 0);
    emit(BPF_JMP | BPF_JSET | BPF_K, O_WRONLY | O_RDWR | O_CREAT | O_TRUNC, L_NOTIFY);
    emit(BPF_JMP | BPF_JA, L_ALLOW, 0);
}

static void build_filter(void) {
    emit(BPF_LD | BPF_W | BPF_ABS, (unsigned)offsetof(struct seccomp_data, arch), 0);
    prog[n_insns++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 1, 0);
    emit(BPF_JMP | BPF_JA, L_ALLOW, 0); /* a foreign arch: the other filter kills it */
    emit(BPF_LD | BPF_W | BPF_ABS, (unsigned)offsetof(struct seccomp_data, nr), 0);
    for (size_t i = 0; i < sizeof META / sizeof *META; i++) notify_on(META[i]);
    emit(BPF_JMP | BPF_JEQ | BPF_K, SYS_setxattrat, L_ENOSYS);
    emit(BPF_JMP | BPF_JEQ | BPF_K, SYS_removexattrat, L_ENOSYS);
    if (mediate_writes || mediate_reads) {
        for (size_t i = 0; i < sizeof NAMESPACE / sizeof *NAMESPACE; i++) notify_on(NAMESPACE[i]);
        emit(BPF_JMP | BPF_JEQ | BPF_K, SYS_openat2, L_ENOSYS); /* flags in memory: callers fall back */
        emit(BPF_JMP | BPF_JEQ | BPF_K, SYS_openat, L_OPEN2);
#ifdef SYS_open
        emit(BPF_JMP | BPF_JEQ | BPF_K, SYS_open, L_OPEN1);
#endif
    }
    emit(BPF_JMP | BPF_JA, L_ALLOW, 0);
    mark(L_OPEN1); /* classic BPF only jumps forward: the blocks, then the returns */
    open_flags_check(1);
    mark(L_OPEN2);
    open_flags_check(2);
    mark(L_ALLOW);
    emit(BPF_RET | BPF_K, SECCOMP_RET_ALLOW, 0);
    mark(L_NOTIFY);
    emit(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF, 0);
    mark(L_ENOSYS);
    emit(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS, 0);
    for (unsigned i = 0; i < n_insns; i++) { /* resolve labels: JA uses k, the others jt */
        unsigned target = fix_jt[i];
        if (BPF_OP(prog[i].code) == BPF_JA && BPF_CLASS(prog[i].code) == BPF_JMP && prog[i].k >= L_ALLOW)
            prog[i].k = label_at[prog[i].k - L_ALLOW] - i - 1;
        else if (target >= L_ALLOW)
            prog[i].jt = (unsigned char)(label_at[target - L_ALLOW] - i - 1);
    }
}

int guard_install(int sock, const char **what) {
    build_filter();
    struct sock_fprog fprog = {.len = (unsigned short)n_insns, .filter = prog};
    *what = "seccomp notify filter";
    int listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                                SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
                                &fprog);
    if (listener < 0) return errno;
    *what = "guard handover";
    if (send_fd(sock, listener, 0) != 0) return errno;
    close(listener);
    close(sock);
    return 0;
}

int guard_receive(int sock) {
    int listener = recv_fd(sock); /* -1: the command failed before it could send one */
    close(sock);
    return listener;
}

/* ---- reading the request ---------------------------------------------------------------- */

/* process_vm_readv, or /proc/TID/mem where a seccomp filter around us refuses it (stockade
 * nested in another sandbox, ours among them). */
static int read_mem(pid_t tid, unsigned long long addr, void *buf, size_t len) {
    static int use_proc_mem;
    struct iovec local = {buf, len}, remote = {(void *)(uintptr_t)addr, len};
    if (!addr) return -EFAULT;
    if (!use_proc_mem) {
        ssize_t n = process_vm_readv(tid, &local, 1, &remote, 1, 0);
        if (n == (ssize_t)len) return 0;
        if (n >= 0 || (errno != EPERM && errno != ENOSYS)) return -EFAULT;
        use_proc_mem = 1;
    }
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/mem", tid);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -EFAULT;
    ssize_t n = pread(fd, buf, len, (off_t)addr);
    close(fd);
    return n == (ssize_t)len ? 0 : -EFAULT;
}

static int read_str(pid_t tid, unsigned long long addr, char *buf, size_t cap, int too_long) {
    size_t got = 0;
    if (!addr) return -EFAULT;
    while (got < cap) {
        size_t page = 4096 - ((addr + got) & 4095), want = cap - got < page ? cap - got : page;
        if (read_mem(tid, addr + got, buf + got, want) < 0) return -EFAULT;
        if (memchr(buf + got, '\0', want)) return 0;
        got += want;
    }
    return -too_long;
}

/* Where a relative path starts: the root, the command thread's cwd, or its dirfd. */
static int open_base(pid_t tid, int dirfd, const char *path) {
    char p[64];
    if (path[0] == '/') return open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd == AT_FDCWD)
        snprintf(p, sizeof p, "/proc/%d/cwd", tid);
    else if (dirfd < 0)
        return -EBADF;
    else
        snprintf(p, sizeof p, "/proc/%d/fd/%d", tid, dirfd);
    int fd = open(p, O_PATH | O_CLOEXEC);
    return fd < 0 ? (errno == ENOENT ? -EBADF : -errno) : fd;
}

struct target {
    int parent; /* the directory that holds the final name (O_PATH) */
    char name[NAME_MAX + 1];
    int obj; /* O_PATH|O_NOFOLLOW on what the name holds; -1 when nothing does */
    int trailing_slash;
    struct stat st; /* of obj */
};

static void drop(struct target *t) {
    if (t->parent >= 0) close(t->parent);
    if (t->obj >= 0) close(t->obj);
    t->parent = t->obj = -1;
}

/* Resolve like the kernel: every component but the last by openat(), the last one here, so
 * that a symlink there is followed only when the syscall would follow it. */
static int resolve_at(int base, const char *path, int follow, int depth, struct target *t) {
    char buf[PATH_MAX];
    size_t len = strlen(path);
    t->parent = t->obj = -1;
    if (len == 0) return -ENOENT;
    memcpy(buf, path, len + 1);
    t->trailing_slash = 0;
    while (len > 1 && buf[len - 1] == '/') {
        buf[--len] = '\0';
        t->trailing_slash = 1;
    }
    char *cut = strrchr(buf, '/');
    const char *dir = ".", *last = buf;
    if (cut == buf) {
        dir = "/";
        last = buf + 1;
    } else if (cut) {
        *cut = '\0';
        dir = buf;
        last = cut + 1;
    }
    if (!*last) last = "."; /* the path was "/" */
    if (strlen(last) > NAME_MAX) return -ENAMETOOLONG;
    t->parent = openat(base, dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (t->parent < 0) return -errno;
    snprintf(t->name, sizeof t->name, "%s", last);
    t->obj = openat(t->parent, last, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (t->obj < 0) {
        int err = errno;
        if (err == ENOENT) return 0;
        drop(t);
        return -err;
    }
    if (fstat(t->obj, &t->st) != 0) {
        int err = errno;
        drop(t);
        return -err;
    }
    if (S_ISLNK(t->st.st_mode) && (follow || t->trailing_slash)) {
        char link[PATH_MAX];
        ssize_t n = readlinkat(t->obj, "", link, sizeof link - 2);
        int trailing = t->trailing_slash;
        if (n < 0 || depth >= 40) {
            int err = n < 0 ? errno : ELOOP;
            drop(t);
            return -err;
        }
        link[n] = '\0';
        if (trailing) strcat(link, "/");
        int from = t->parent;
        t->parent = -1;
        drop(t);
        int r = resolve_at(from, link, follow, depth + 1, t);
        close(from);
        return r;
    }
    if (t->trailing_slash && !S_ISDIR(t->st.st_mode)) {
        drop(t);
        return -ENOTDIR;
    }
    return 0;
}

/* ---- reporting refusals (stockade names the rule that blocked them) -------------------- */

int guard_report_fd = -1;
static char seen[2][PATH_MAX]; /* the paths the current request named, made absolute */
static int n_seen;

static void remember(const char *link, const char *path) {
    if (guard_report_fd < 0 || n_seen >= 2) return;
    char *out = seen[n_seen++];
    ssize_t n = 0;
    if (!path || path[0] != '/') {
        n = readlink(link, out, PATH_MAX - 2);
        if (n < 0) n = 0;
    }
    out[n] = '\0';
    if (path) snprintf(out + n, (size_t)(PATH_MAX - n), "%s%s", n ? "/" : "", path);
}

static const char *op_name(long nr) {
    static const struct { long nr; const char *name; } ops[] = {
#ifdef SYS_open
        {SYS_open, "open"}, {SYS_creat, "create"}, {SYS_mkdir, "mkdir"}, {SYS_mknod, "mknod"},
        {SYS_symlink, "symlink"}, {SYS_unlink, "unlink"}, {SYS_rmdir, "rmdir"}, {SYS_link, "link"},
        {SYS_rename, "rename"}, {SYS_chmod, "chmod"}, {SYS_chown, "chown"}, {SYS_lchown, "chown"},
        {SYS_utime, "utimes"}, {SYS_utimes, "utimes"}, {SYS_futimesat, "utimes"},
#endif
        {SYS_openat, "open"}, {SYS_mkdirat, "mkdir"}, {SYS_mknodat, "mknod"}, {SYS_symlinkat, "symlink"},
        {SYS_unlinkat, "unlink"}, {SYS_linkat, "link"}, {SYS_renameat, "rename"}, {SYS_renameat2, "rename"},
        {SYS_truncate, "truncate"}, {SYS_fchmod, "chmod"}, {SYS_fchown, "chown"}, {SYS_fchmodat, "chmod"},
        {SYS_fchmodat2, "chmod"}, {SYS_fchownat, "chown"}, {SYS_utimensat, "utimes"},
        {SYS_setxattr, "setxattr"}, {SYS_lsetxattr, "setxattr"}, {SYS_fsetxattr, "setxattr"},
        {SYS_removexattr, "removexattr"}, {SYS_lremovexattr, "removexattr"},
        {SYS_fremovexattr, "removexattr"},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (ops[i].nr == nr) return ops[i].name;
    return "syscall";
}

/* One line per refused call, never blocking the command: a full pipe drops the report. */
static void report(const struct seccomp_notif *req) {
    if (guard_report_fd < 0 || !n_seen) return;
    static char line[2 * PATH_MAX + 32];
    int n = snprintf(line, sizeof line, "%s\t%s\t%s\n", op_name((long)req->data.nr), seen[0],
                     n_seen > 1 ? seen[1] : "");
    if (n > 0 && (size_t)n < sizeof line && write(guard_report_fd, line, (size_t)n) < 0) {
    }
}

static int resolve(pid_t tid, int dirfd, const char *path, int follow, struct target *t) {
    int base = open_base(tid, dirfd, path);
    t->parent = t->obj = -1;
    if (base < 0) return base;
    if (guard_report_fd >= 0) {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", base);
        remember(link, path);
    }
    int r = resolve_at(base, path, follow, 0, t);
    close(base);
    return r;
}

/* An fd of the command as a target (fchmod(fd), AT_EMPTY_PATH, utimensat(fd, NULL)). */
static int resolve_fd(pid_t tid, int fd, struct target *t) {
    char p[64];
    t->parent = -1;
    t->name[0] = '\0';
    t->trailing_slash = 0;
    if (fd < 0) return -EBADF;
    snprintf(p, sizeof p, "/proc/%d/fd/%d", tid, fd);
    remember(p, NULL);
    t->obj = open(p, O_PATH | O_CLOEXEC);
    if (t->obj < 0) return errno == ENOENT ? -EBADF : -errno;
    if (fstat(t->obj, &t->st) != 0) {
        int err = errno;
        drop(t);
        return -err;
    }
    return 0;
}

/* ---- the decision ----------------------------------------------------------------------- */

static const struct ent NOWHERE = {0, 0, 0, 0, 0};     /* reachable by no entry: invisible */
static const struct ent ANONYMOUS = {0, 0, 'W', 0, 0}; /* pipes, sockets, memfds: the command's own */

static const struct ent *walk(int dirfd) {
    int cur = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
    struct stat st, up_st;
    for (int depth = 0; cur >= 0 && depth < 4096; depth++) {
        if (fstat(cur, &st) != 0) break;
        const struct ent *e = lookup(st.st_dev, st.st_ino, 0);
        if (e && e->kind) {
            close(cur);
            return e;
        }
        int up = openat(cur, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (up < 0 || fstat(up, &up_st) != 0 || (up_st.st_dev == st.st_dev && up_st.st_ino == st.st_ino)) {
            if (up >= 0) close(up);
            break; /* the root: no entry covers it */
        }
        close(cur);
        cur = up;
    }
    if (cur >= 0) close(cur);
    return &NOWHERE;
}

/* The directory an fd-only target lives in, found by its name and checked to hold it. */
static int locate(struct target *t) {
    char self[64], path[PATH_MAX];
    snprintf(self, sizeof self, "/proc/self/fd/%d", t->obj);
    ssize_t n = readlink(self, path, sizeof path - 1);
    if (n < 0) return -errno;
    path[n] = '\0';
    if (path[0] != '/') return 1; /* pipe:[..], socket:[..], anon_inode:..: no place in the tree */
    char *cut = strrchr(path, '/');
    if (n > 10 && strcmp(path + n - 10, " (deleted)") == 0) return t->st.st_nlink == 0 ? 1 : -EACCES;
    *cut = '\0';
    t->parent = open(cut == path ? "/" : path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    struct stat st;
    if (t->parent < 0 || fstatat(t->parent, cut + 1, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        st.st_dev != t->st.st_dev || st.st_ino != t->st.st_ino)
        return -EACCES; /* moved meanwhile: refuse rather than guess */
    snprintf(t->name, sizeof t->name, "%s", cut + 1);
    return 0;
}

static const struct ent *decide(struct target *t) {
    if (t->obj >= 0) {
        const struct ent *e = lookup(t->st.st_dev, t->st.st_ino, 0);
        if (e && e->kind) return e;
        if (S_ISDIR(t->st.st_mode)) return walk(t->obj);
        if (t->parent < 0) {
            int r = locate(t);
            if (r == 1) return &ANONYMOUS;
            if (r < 0) return &NOWHERE;
        }
    }
    struct stat st;
    if (n_names && fstat(t->parent, &st) == 0)
        for (size_t i = 0; i < n_names; i++)
            if (names[i].dev == st.st_dev && names[i].ino == st.st_ino && !strcmp(names[i].name, t->name))
                return &names[i].ent;
    return walk(t->parent);
}

static int guarded(const struct ent *e) { return e->kind == 'G'; }
static int invisible(const struct ent *e) { return e->kind == 0; }

/* May this existing object be renamed over, removed or moved? */
static int movable(struct target *t) {
    if (t->obj < 0) return 1;
    const struct ent *e = lookup(t->st.st_dev, t->st.st_ino, 0);
    return !(e && (e->pinned || e->kind == 'G'));
}

/* Creating or removing a name in t->parent. */
static int name_allowed(struct target *t) {
    struct target dir = {.parent = t->parent, .obj = -1};
    snprintf(dir.name, sizeof dir.name, "%s", t->name);
    const struct ent *e = decide(&dir); /* name rules, then the directory's nearest entry */
    return !guarded(e) && !invisible(e) && movable(t);
}

/* ---- performing -------------------------------------------------------------------------- */

static mode_t umask_of(pid_t tid) {
    char p[64], buf[2048];
    snprintf(p, sizeof p, "/proc/%d/status", tid);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    mode_t mask = 077; /* unknown: the strictest */
    if (fd < 0) return mask;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n > 0) {
        buf[n] = '\0';
        char *line = strstr(buf, "\nUmask:");
        if (line) mask = (mode_t)strtoul(line + 7, NULL, 8) & 0777;
    }
    return mask;
}

static const char *self_path(int fd) {
    static char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    return p;
}

static int still_waiting(int listener, const struct seccomp_notif *req) {
    __u64 id = req->id;
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

/* Put `fd` into the command as the syscall's result. 1: answered; <0: an error to answer. */
static long hand_over(int listener, const struct seccomp_notif *req, int fd, int flags) {
    struct seccomp_notif_addfd add = {.id = req->id, .flags = SECCOMP_ADDFD_FLAG_SEND, .srcfd = (__u32)fd,
                                      .newfd_flags = (__u32)(flags & O_CLOEXEC)};
    long r = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
    int err = errno;
    close(fd);
    if (r >= 0 || err == ENOENT) return 1; /* done, or the command is gone */
    return -err;
}

static void reply(int listener, const struct seccomp_notif *req, long value) {
    struct seccomp_notif_resp resp = {.id = req->id};
    if (value < 0)
        resp.error = (__s32)value;
    else
        resp.val = value;
    while (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0 && errno == EINTR) {
    }
}

/* A FIFO's open waits for the other end: finish it in a helper so others are not held up. */
static long open_in_helper(int listener, const struct seccomp_notif *req, int obj, int flags) {
    pid_t helper = fork();
    if (helper < 0) return -errno;
    if (helper > 0) return 1; /* the helper answers; the supervisor reaps it */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    int fd = open(self_path(obj), (flags & ~(O_CREAT | O_EXCL | O_NOFOLLOW)) | O_CLOEXEC);
    long r = fd < 0 ? -errno : hand_over(listener, req, fd, flags);
    if (r < 0) reply(listener, req, r);
    _exit(0);
}

static long do_open(int listener, const struct seccomp_notif *req, int dirfd, unsigned long long addr,
                    int flags, mode_t mode) {
    pid_t tid = (pid_t)req->pid;
    char path[PATH_MAX];
    int r = read_str(tid, addr, path, sizeof path, ENAMETOOLONG);
    if (r < 0) return r;
    int tmpfile = (flags & O_TMPFILE) == O_TMPFILE, creating = (flags & O_CREAT) && !tmpfile;
    int follow = tmpfile || !((flags & O_NOFOLLOW) || (creating && (flags & O_EXCL)));
    int writing = (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC));
    struct target t;
    r = resolve(tid, dirfd, path, follow, &t);
    if (r < 0) return r;
    long out;
    const struct ent *e = decide(&t);
    if (invisible(e) || (guarded(e) && (writing || !(e->rights & LL_READ_FILE))))
        out = -EACCES;
    else if (!still_waiting(listener, req))
        out = 1;
    else if (t.obj >= 0) {
        if (creating && (flags & O_EXCL))
            out = -EEXIST;
        else if (S_ISLNK(t.st.st_mode))
            out = -ELOOP;
        else if (creating && S_ISDIR(t.st.st_mode))
            out = -EISDIR;
        else if (tmpfile) {
            umask(umask_of(tid));
            int fd = openat(t.obj, ".", flags | O_CLOEXEC, mode);
            out = fd < 0 ? -errno : hand_over(listener, req, fd, flags);
        } else if (S_ISFIFO(t.st.st_mode) && !(flags & O_NONBLOCK))
            out = open_in_helper(listener, req, t.obj, flags);
        else {
            int fd = open(self_path(t.obj), (flags & ~(O_CREAT | O_EXCL | O_NOFOLLOW)) | O_CLOEXEC);
            out = fd < 0 ? -errno : hand_over(listener, req, fd, flags);
        }
    } else if (!creating || tmpfile)
        out = -ENOENT;
    else if (t.trailing_slash)
        out = -EISDIR;
    else {
        umask(umask_of(tid));
        int fd = openat(t.parent, t.name, flags | O_NOFOLLOW | O_CLOEXEC, mode);
        out = fd < 0 ? -errno : hand_over(listener, req, fd, flags);
    }
    drop(&t);
    return out;
}

/* mkdir, mknod, symlink: a new name. */
static long do_create(const struct seccomp_notif *req, int listener, int dirfd, unsigned long long addr,
                      char what, mode_t mode, dev_t dev, unsigned long long target_addr) {
    pid_t tid = (pid_t)req->pid;
    char path[PATH_MAX], target[PATH_MAX];
    int r = read_str(tid, addr, path, sizeof path, ENAMETOOLONG);
    if (r == 0 && what == 's') r = read_str(tid, target_addr, target, sizeof target, ENAMETOOLONG);
    if (r < 0) return r;
    struct target t;
    r = resolve(tid, dirfd, path, 0, &t);
    if (r < 0) return r;
    long out;
    if (t.obj >= 0)
        out = -EEXIST;
    else if (!name_allowed(&t))
        out = -EACCES;
    else if (!still_waiting(listener, req))
        out = 0;
    else {
        umask(umask_of(tid));
        int rc = what == 'd'   ? mkdirat(t.parent, t.name, mode)
                 : what == 'n' ? mknodat(t.parent, t.name, mode, dev)
                               : symlinkat(target, t.parent, t.name);
        out = rc < 0 ? -errno : 0;
    }
    drop(&t);
    return out;
}

static long do_unlink(const struct seccomp_notif *req, int listener, int dirfd, unsigned long long addr,
                      int flags) {
    pid_t tid = (pid_t)req->pid;
    char path[PATH_MAX];
    int r = read_str(tid, addr, path, sizeof path, ENAMETOOLONG);
    if (r < 0) return r;
    struct target t;
    r = resolve(tid, dirfd, path, 0, &t);
    if (r < 0) return r;
    long out;
    if (t.obj < 0)
        out = -ENOENT;
    else if (!name_allowed(&t))
        out = -EACCES;
    else if (!still_waiting(listener, req))
        out = 0;
    else
        out = unlinkat(t.parent, t.name, flags & AT_REMOVEDIR) < 0 ? -errno : 0;
    drop(&t);
    return out;
}

static long do_rename(const struct seccomp_notif *req, int listener, int olddir, unsigned long long oldaddr,
                      int newdir, unsigned long long newaddr, unsigned flags, int link) {
    pid_t tid = (pid_t)req->pid;
    char from[PATH_MAX], to[PATH_MAX];
    int r = read_str(tid, newaddr, to, sizeof to, ENAMETOOLONG);
    if (r == 0) r = read_str(tid, oldaddr, from, sizeof from, ENAMETOOLONG);
    if (r < 0) return r;
    struct target src, dst;
    int by_fd = link && (flags & AT_EMPTY_PATH) && !from[0];
    if (by_fd)
        r = resolve_fd(tid, olddir, &src);
    else
        r = resolve(tid, olddir, from, link && (flags & AT_SYMLINK_FOLLOW), &src);
    if (r < 0) return r;
    r = resolve(tid, newdir, to, 0, &dst);
    if (r < 0) {
        drop(&src);
        return r;
    }
    long out;
    const struct ent *e = src.obj >= 0 ? decide(&src) : &NOWHERE;
    if (src.obj < 0)
        out = -ENOENT;
    else if (link && dst.obj >= 0)
        out = -EEXIST;
    else if (guarded(e) || invisible(e) || !name_allowed(&dst) || (!link && !name_allowed(&src)))
        out = -EACCES; /* a guarded file linked elsewhere would be writable there */
    else if (!still_waiting(listener, req))
        out = 0;
    else if (link && by_fd)
        out = linkat(src.obj, "", dst.parent, dst.name, AT_EMPTY_PATH) < 0 ? -errno : 0;
    else if (link)
        out = linkat(src.parent, src.name, dst.parent, dst.name, 0) < 0 ? -errno : 0;
    else
        out = syscall(SYS_renameat2, src.parent, src.name, dst.parent, dst.name, flags) < 0 ? -errno : 0;
    drop(&src);
    drop(&dst);
    return out;
}

/* chmod, chown, utimes, xattrs, truncate: the object must lie under a Plan write entry. */
enum meta { CHMOD, CHOWN, UTIMES, SETXATTR, REMOVEXATTR, TRUNCATE };

struct meta_args {
    enum meta op;
    mode_t mode;
    uid_t uid;
    gid_t gid;
    struct timespec times[2];
    int now; /* times is NULL: now */
    char name[XATTR_NAME_MAX + 1];
    char value[XATTR_SIZE_MAX];
    size_t size;
    int xflags;
    off_t length;
};

static long perform_meta(struct target *t, const struct meta_args *a) {
    int link = S_ISLNK(t->st.st_mode), rc;
    const char *self = self_path(t->obj);
    if (link && (a->op == CHMOD || a->op == SETXATTR || a->op == REMOVEXATTR))
        return a->op == CHMOD ? -EOPNOTSUPP : -EPERM; /* as the kernel: no modes or user xattrs on links */
    switch (a->op) {
    case CHMOD:
        rc = fchmodat(AT_FDCWD, self, a->mode, 0);
        break;
    case CHOWN:
        rc = fchownat(t->obj, "", a->uid, a->gid, AT_EMPTY_PATH);
        break;
    case UTIMES:
        rc = link ? utimensat(t->parent, t->name, a->now ? NULL : a->times, AT_SYMLINK_NOFOLLOW)
                  : utimensat(AT_FDCWD, self, a->now ? NULL : a->times, 0);
        break;
    case TRUNCATE:
        rc = truncate(self, a->length);
        break;
    case SETXATTR:
        rc = setxattr(self, a->name, a->value, a->size, a->xflags);
        break;
    default:
        rc = removexattr(self, a->name);
    }
    return rc < 0 ? -errno : 0;
}

static long do_meta(const struct seccomp_notif *req, int listener, int dirfd, unsigned long long addr,
                    int by_fd, int nofollow, struct meta_args *a) {
    pid_t tid = (pid_t)req->pid;
    struct target t;
    int r;
    if (by_fd)
        r = resolve_fd(tid, dirfd, &t);
    else {
        char path[PATH_MAX];
        r = read_str(tid, addr, path, sizeof path, ENAMETOOLONG);
        if (r == 0) r = resolve(tid, dirfd, path, !nofollow, &t);
        if (r == 0 && t.obj < 0) {
            drop(&t);
            r = -ENOENT;
        }
    }
    if (r < 0) return r;
    long out;
    const struct ent *e = decide(&t);
    if (e->kind != 'W')
        out = -EACCES; /* outside the writable entries: Landlock alone would not have stopped it */
    else if (!still_waiting(listener, req))
        out = 0;
    else
        out = perform_meta(&t, a);
    drop(&t);
    return out;
}

static struct meta_args margs;

static int read_times(pid_t tid, unsigned long long addr, int kind) {
    margs.now = !addr;
    if (!addr) return 0;
    if (kind == 'n') return read_mem(tid, addr, margs.times, sizeof margs.times); /* timespec[2] */
    if (kind == 'u') { /* struct utimbuf */
        long v[2];
        if (read_mem(tid, addr, v, sizeof v) < 0) return -EFAULT;
        margs.times[0] = (struct timespec){v[0], 0};
        margs.times[1] = (struct timespec){v[1], 0};
        return 0;
    }
    struct timeval tv[2]; /* utimes, futimesat */
    if (read_mem(tid, addr, tv, sizeof tv) < 0) return -EFAULT;
    for (int i = 0; i < 2; i++) margs.times[i] = (struct timespec){tv[i].tv_sec, tv[i].tv_usec * 1000};
    return 0;
}

static int read_xattr(pid_t tid, unsigned long long name, unsigned long long value, size_t size) {
    int r = read_str(tid, name, margs.name, sizeof margs.name, ERANGE);
    if (r < 0) return r;
    if (size > sizeof margs.value) return -E2BIG;
    margs.size = size;
    return size ? read_mem(tid, value, margs.value, size) : 0;
}

static long handle(int listener, const struct seccomp_notif *req) {
    const __u64 *a = req->data.args;
    pid_t tid = (pid_t)req->pid;
    long nr = req->data.nr;
    int r;
    memset(&margs, 0, offsetof(struct meta_args, value));
#ifdef SYS_open
    if (nr == SYS_open) return do_open(listener, req, AT_FDCWD, a[0], (int)a[1], (mode_t)a[2]);
    if (nr == SYS_creat)
        return do_open(listener, req, AT_FDCWD, a[0], O_CREAT | O_WRONLY | O_TRUNC, (mode_t)a[1]);
    if (nr == SYS_mkdir) return do_create(req, listener, AT_FDCWD, a[0], 'd', (mode_t)a[1], 0, 0);
    if (nr == SYS_mknod) return do_create(req, listener, AT_FDCWD, a[0], 'n', (mode_t)a[1], (dev_t)a[2], 0);
    if (nr == SYS_symlink) return do_create(req, listener, AT_FDCWD, a[1], 's', 0, 0, a[0]);
    if (nr == SYS_unlink) return do_unlink(req, listener, AT_FDCWD, a[0], 0);
    if (nr == SYS_rmdir) return do_unlink(req, listener, AT_FDCWD, a[0], AT_REMOVEDIR);
    if (nr == SYS_link) return do_rename(req, listener, AT_FDCWD, a[0], AT_FDCWD, a[1], 0, 1);
    if (nr == SYS_rename) return do_rename(req, listener, AT_FDCWD, a[0], AT_FDCWD, a[1], 0, 0);
    if (nr == SYS_chmod || nr == SYS_chown || nr == SYS_lchown) {
        margs.op = nr == SYS_chmod ? CHMOD : CHOWN;
        margs.mode = (mode_t)a[1];
        margs.uid = (uid_t)a[1];
        margs.gid = (gid_t)a[2];
        return do_meta(req, listener, AT_FDCWD, a[0], 0, nr == SYS_lchown, &margs);
    }
    if (nr == SYS_utime || nr == SYS_utimes || nr == SYS_futimesat) {
        int at = nr == SYS_futimesat;
        margs.op = UTIMES;
        if ((r = read_times(tid, a[1 + at], nr == SYS_utime ? 'u' : 'v')) < 0) return r;
        return do_meta(req, listener, at ? (int)a[0] : AT_FDCWD, a[at], 0, 0, &margs);
    }
#endif
    if (nr == SYS_openat) return do_open(listener, req, (int)a[0], a[1], (int)a[2], (mode_t)a[3]);
    if (nr == SYS_mkdirat) return do_create(req, listener, (int)a[0], a[1], 'd', (mode_t)a[2], 0, 0);
    if (nr == SYS_mknodat)
        return do_create(req, listener, (int)a[0], a[1], 'n', (mode_t)a[2], (dev_t)a[3], 0);
    if (nr == SYS_symlinkat) return do_create(req, listener, (int)a[1], a[2], 's', 0, 0, a[0]);
    if (nr == SYS_unlinkat) return do_unlink(req, listener, (int)a[0], a[1], (int)a[2]);
    if (nr == SYS_linkat)
        return do_rename(req, listener, (int)a[0], a[1], (int)a[2], a[3], (unsigned)a[4], 1);
    if (nr == SYS_renameat) return do_rename(req, listener, (int)a[0], a[1], (int)a[2], a[3], 0, 0);
    if (nr == SYS_renameat2)
        return do_rename(req, listener, (int)a[0], a[1], (int)a[2], a[3], (unsigned)a[4], 0);
    if (nr == SYS_truncate) {
        margs.op = TRUNCATE;
        margs.length = (off_t)a[1];
        return do_meta(req, listener, AT_FDCWD, a[0], 0, 0, &margs);
    }
    if (nr == SYS_fchmod || nr == SYS_fchown) {
        margs.op = nr == SYS_fchmod ? CHMOD : CHOWN;
        margs.mode = (mode_t)a[1];
        margs.uid = (uid_t)a[1];
        margs.gid = (gid_t)a[2];
        return do_meta(req, listener, (int)a[0], 0, 1, 0, &margs);
    }
    if (nr == SYS_fchmodat || nr == SYS_fchmodat2) {
        int flags = nr == SYS_fchmodat2 ? (int)a[3] : 0;
        margs.op = CHMOD;
        margs.mode = (mode_t)a[2];
        int by_fd = (flags & AT_EMPTY_PATH) && read_str(tid, a[1], margs.name, 2, ENAMETOOLONG) == 0 &&
                    !margs.name[0];
        return do_meta(req, listener, (int)a[0], a[1], by_fd, flags & AT_SYMLINK_NOFOLLOW, &margs);
    }
    if (nr == SYS_fchownat) {
        int flags = (int)a[4];
        margs.op = CHOWN;
        margs.uid = (uid_t)a[2];
        margs.gid = (gid_t)a[3];
        int by_fd = (flags & AT_EMPTY_PATH) && read_str(tid, a[1], margs.name, 2, ENAMETOOLONG) == 0 &&
                    !margs.name[0];
        return do_meta(req, listener, (int)a[0], a[1], by_fd, flags & AT_SYMLINK_NOFOLLOW, &margs);
    }
    if (nr == SYS_utimensat) {
        margs.op = UTIMES;
        if ((r = read_times(tid, a[2], 'n')) < 0) return r;
        if (!a[1] && (int)a[0] == AT_FDCWD) return -EFAULT;
        return do_meta(req, listener, (int)a[0], a[1], !a[1], (int)a[3] & AT_SYMLINK_NOFOLLOW, &margs);
    }
    if (nr == SYS_setxattr || nr == SYS_lsetxattr || nr == SYS_fsetxattr) {
        margs.op = SETXATTR;
        margs.xflags = (int)a[4];
        if ((r = read_xattr(tid, a[1], a[2], (size_t)a[3])) < 0) return r;
        int by_fd = nr == SYS_fsetxattr;
        return do_meta(req, listener, by_fd ? (int)a[0] : AT_FDCWD, a[0], by_fd, nr == SYS_lsetxattr, &margs);
    }
    if (nr == SYS_removexattr || nr == SYS_lremovexattr || nr == SYS_fremovexattr) {
        margs.op = REMOVEXATTR;
        if ((r = read_xattr(tid, a[1], 0, 0)) < 0) return r;
        int by_fd = nr == SYS_fremovexattr;
        return do_meta(req, listener, by_fd ? (int)a[0] : AT_FDCWD, a[0], by_fd, nr == SYS_lremovexattr,
                       &margs);
    }
    return -ENOSYS; /* the filter sends nothing else */
}

void guard_serve_one(int listener) {
    static struct seccomp_notif *req;
    static size_t req_size;
    if (!req) {
        struct seccomp_notif_sizes sizes;
        if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) return;
        req_size = sizes.seccomp_notif > sizeof *req ? sizes.seccomp_notif : sizeof *req;
        req = malloc(req_size);
        if (!req) return;
    }
    memset(req, 0, req_size);
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, req) != 0) return; /* EINTR, or it went away */
    n_seen = 0;
    long out = handle(listener, req);
    if (out == -EACCES || out == -EPERM) report(req);
    if (out == 1 && (req->data.nr == SYS_openat
#ifdef SYS_open
                     || req->data.nr == SYS_open || req->data.nr == SYS_creat
#endif
                     ))
        return; /* answered with the fd (or by the helper) */
    reply(listener, req, out < 0 ? out : 0);
}
