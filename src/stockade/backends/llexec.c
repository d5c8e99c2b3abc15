/* llexec: confine itself with a Landlock ruleset and a seccomp filter, then exec the command.
 *
 *   llexec STATUS_FD RULESET_FD SECCOMP_FD GUARD_FD SUPERVISOR_RULESET_FD PROG [ARGS...]
 *   llexec --bridge PORT HANDOFF PROG [ARGS...]    (proxy mode, inside the sandbox: bridge.c)
 *   llexec --ctty PROG [ARGS...]   (inside the sandbox: stdin, a PTY, becomes the controlling
 *                                   terminal, so Ctrl-C reaches the foreground process group)
 *   llexec [--cgroup PROCS_FILE] [--limits SPEC] (-- PROG [ARGS...] | STATUS_FD ...)
 *       --cgroup: join that cgroup (write our pid to its cgroup.procs) before anything else, so
 *       every process the command starts is counted by its pids.max;
 *       --limits: "as=N,nproc=N,cpu=N,fsize=N,nofile=N" (any subset), set as both soft and
 *       hard limits (cpu: hard one second later, so SIGXCPU comes first) right before PROG is
 *       exec'd; "--" then execs PROG directly (inside bubblewrap);
 *       --report FD: the guard writes "OP\tPATH\tPATH2\n" there for every call it refuses.
 *
 * Why a separate binary: the restrictions must reach the sandboxed command only, never the
 * stockade process, and applying them in a Python preexec_fn forces fork() (no vfork), runs
 * Python between fork and exec, and costs more the bigger the parent is. Here the parent
 * spawns this tiny static program with vfork, and everything happens after exec.
 *
 * The parent builds the ruleset (an fd) and writes the classic-BPF program (struct sock_filter
 * array) into a pipe. STATUS_FD is the write end of a pipe the parent reads to EOF: on any
 * failure this program writes "<step>: <strerror>\n" there and exits 127 without running
 * PROG; on success exec closes it (it is made close-on-exec here, because subprocess's
 * pass_fds clears that flag) and the parent reads nothing. RULESET_FD or SECCOMP_FD -1 skips
 * that step (tests). None of the three fds is left open in PROG.
 *
 * PROG runs in a child of this program, in its own process group, while this program
 * supervises it (see supervise()): a Landlock sandbox has no pid namespace whose end would
 * take every process with it, so this is what ends them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <linux/securebits.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bridge.h"
#include "guard.h"

#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446 /* the same number on every architecture */
#endif

static int status_fd = 2; /* stderr until STATUS_FD is known */

static void put(char *buf, size_t *len, size_t cap, const char *s) {
    while (*s && *len < cap) buf[(*len)++] = *s++;
}

/* Report the step that failed and end without running anything. */
static void fail(const char *step, int err) {
    char buf[256];
    size_t len = 0;
    put(buf, &len, sizeof buf - 1, step);
    put(buf, &len, sizeof buf - 1, ": ");
    put(buf, &len, sizeof buf - 1, strerror(err));
    buf[len++] = '\n';
    while (write(status_fd, buf, len) < 0 && errno == EINTR) {
    }
    _exit(127);
}

static int parse_fd(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < -1 || v > 1 << 30) return 0;
    *out = (int)v;
    return 1;
}

/* Did stockade die before PR_SET_PDEATHSIG was in place? Then no signal will ever come. */
static int parent_gone(pid_t parent) {
    if (getppid() != parent) return 1; /* it died after main() started */
    /* It died even earlier (we were reparented before main): stockade held the only read end
     * of the status pipe, so a pipe with no reader left means stockade is gone. */
    struct pollfd p = {.fd = status_fd, .events = POLLOUT};
    return status_fd > 2 && poll(&p, 1, 0) == 1 && (p.revents & POLLERR);
}

/* Give up every capability for good. Without namespaces a root command would keep real root
 * powers that Landlock does not mediate: chown and chmod of any file, mknod of the host's
 * disks, sethostname, ... Permitted, effective and inheritable sets are cleared, and so are the
 * ambient set and (when we may) the bounding set, with securebits locked so that exec'ing as
 * uid 0 grants nothing back (no_new_privs would already cap it at what we hold: nothing). */
static void drop_capabilities(void) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        fail("clear ambient capabilities", errno);
    struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &head, data) != 0) fail("capget", errno);
    if (data[0].effective & (1u << CAP_SETPCAP)) {
        int bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                   SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                   SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
        if (prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) != 0) fail("securebits", errno);
        for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++)
            if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) fail("drop bounding capability", errno);
    }
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &head, data) != 0) fail("capset", errno);
    if (syscall(SYS_capget, &head, data) != 0) fail("capget", errno);
    if (data[0].permitted | data[1].permitted | data[0].effective | data[1].effective)
        fail("capabilities still held", EPERM);
}

static void install_seccomp(int fd) {
    static struct sock_filter insns[BPF_MAXINSNS + 1];
    size_t got = 0, cap = sizeof insns;
    for (;;) {
        ssize_t n = read(fd, (char *)insns + got, cap - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("seccomp read", errno);
        if (n == 0) break;
        got += (size_t)n;
        if (got == cap) fail("seccomp read", E2BIG); /* more than BPF_MAXINSNS */
    }
    close(fd);
    if (got == 0 || got % sizeof insns[0]) fail("seccomp read", EINVAL);
    struct sock_fprog prog = {.len = (unsigned short)(got / sizeof insns[0]), .filter = insns};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) fail("seccomp", errno);
}

/* The supervisor: stays outside the command's Landlock domain (a domain's scoped signals cannot
 * reach an enclosing one), waits for the command, answers the guard's notifications, and kills
 * the command's whole process group when the command ends or when stockade goes away
 * (PR_SET_PDEATHSIG delivers SIGTERM here), so nothing the command started outlives it -- not
 * even if stockade is killed with SIGKILL. It exits with the command's status, a signal death
 * as 128+N. The group id stays reserved while any member lives, so the kill can never hit an
 * unrelated process. */
static int supervise(pid_t child, int signals, int listener) {
    for (;;) {
        int status;
        pid_t done;
        while ((done = waitpid(-1, &status, WNOHANG)) > 0) /* the command, or a guard helper */
            if (done == child) {
                kill(-child, SIGKILL); /* whatever it left running */
                return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
            }
        struct pollfd p[2] = {{.fd = signals, .events = POLLIN}, {.fd = listener, .events = POLLIN}};
        if (poll(p, listener >= 0 ? 2 : 1, -1) < 0) continue;
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo info;
            if (read(signals, &info, sizeof info) == sizeof info && info.ssi_signo == SIGTERM) {
                kill(-child, SIGKILL);
                while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
                }
                return 128 + SIGKILL;
            }
        }
        if (listener >= 0 && (p[1].revents & POLLIN)) guard_serve_one(listener);
        if (listener >= 0 && (p[1].revents & (POLLHUP | POLLERR))) { /* no process uses the filter */
            close(listener);
            listener = -1;
        }
    }
}

static void restrict_self(int ruleset) {
    if (syscall(SYS_landlock_restrict_self, ruleset, 0) != 0) fail("landlock_restrict_self", errno);
    close(ruleset);
}

static const char *limits_spec; /* applied right before PROG is exec'd */

static void join_cgroup(const char *procs) {
    int fd = open(procs, O_WRONLY | O_CLOEXEC);
    if (fd < 0) fail("cgroup", errno);
    if (write(fd, "0\n", 2) != 2) fail("cgroup join", errno);
    close(fd);
}

static void apply_limits(void) {
    static const struct { const char *name; int resource; } known[] = {
        {"as", RLIMIT_AS}, {"nproc", RLIMIT_NPROC}, {"cpu", RLIMIT_CPU},
        {"fsize", RLIMIT_FSIZE}, {"nofile", RLIMIT_NOFILE},
    };
    const char *p = limits_spec;
    while (p && *p) {
        size_t n = strcspn(p, "=");
        char *end;
        unsigned long long value = strtoull(p + n + (p[n] == '='), &end, 10);
        int resource = -1;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (strlen(known[i].name) == n && strncmp(p, known[i].name, n) == 0) resource = known[i].resource;
        if (resource < 0 || p[n] != '=' || (*end && *end != ',')) fail("limits", EINVAL);
        struct rlimit limit = {value, resource == RLIMIT_CPU ? value + 1 : value};
        if (setrlimit(resource, &limit) != 0) fail("setrlimit", errno);
        p = *end ? end + 1 : end;
    }
}

int main(int argc, char **argv) {
    while (argc > 2 && (strcmp(argv[1], "--cgroup") == 0 || strcmp(argv[1], "--limits") == 0 ||
                        strcmp(argv[1], "--report") == 0)) {
        if (argv[1][2] == 'c') join_cgroup(argv[2]);
        else if (argv[1][2] == 'l') limits_spec = argv[2];
        else if (parse_fd(argv[2], &guard_report_fd) && guard_report_fd >= 0)
            fcntl(guard_report_fd, F_SETFD, FD_CLOEXEC); /* the supervisor's alone */
        argc -= 2;
        argv += 2;
    }
    if (argc > 2 && strcmp(argv[1], "--") == 0) {
        apply_limits();
        execvp(argv[2], argv + 2);
        fail("exec", errno);
    }
    if (argc > 1 && strcmp(argv[1], "--bridge") == 0) return bridge_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "--connect") == 0) return connect_main(argc - 1, argv + 1);
    if (argc > 2 && strcmp(argv[1], "--ctty") == 0) { /* a session on a PTY: make it ours */
        setsid(); /* fails harmlessly when we lead a session already (bwrap --new-session) */
        if (isatty(0) && ioctl(0, TIOCSCTTY, 0) != 0) fail("TIOCSCTTY", errno);
        execvp(argv[2], argv + 2);
        fail("exec", errno);
    }
    int fds[5]; /* STATUS RULESET SECCOMP GUARD SUPERVISOR_RULESET */
    int ok = argc >= 7;
    for (int i = 0; ok && i < 5; i++) ok = parse_fd(argv[i + 1], &fds[i]);
    if (!ok) {
        static const char usage[] =
            "usage: llexec STATUS_FD RULESET_FD SECCOMP_FD GUARD_FD SUPERVISOR_RULESET_FD PROG [ARGS...]\n";
        if (write(2, usage, sizeof usage - 1) < 0) _exit(127);
        return 127;
    }
    if (fds[0] >= 0) {
        status_fd = fds[0];
        if (fcntl(status_fd, F_SETFD, FD_CLOEXEC) != 0) fail("status fd", errno);
    }
    pid_t parent = getppid();
    if (setsid() < 0) fail("setsid", errno);
    sigset_t blocked, old;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &blocked, &old) != 0) fail("sigprocmask", errno);
    int signals = signalfd(-1, &blocked, SFD_CLOEXEC);
    if (signals < 0) fail("signalfd", errno);
    if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) != 0) fail("pdeathsig", errno);
    if (parent_gone(parent)) fail("parent", ESRCH);
    int pair[2] = {-1, -1};
    if (fds[3] >= 0) {
        const char *what;
        int err = guard_load(fds[3], &what);
        if (err) fail(what, err);
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) fail("socketpair", errno);
    }
    /* Both halves give up every capability (the command inherits the emptied bounding set), and
     * the supervisor takes the Plan's ruleset too: what it does for the guard stays checked. */
    drop_capabilities();
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail("no_new_privs", errno);
    if (fds[4] >= 0) restrict_self(fds[4]);
    pid_t supervisor = getpid();
    pid_t child = fork();
    if (child < 0) fail("fork", errno);
    if (child > 0) {
        close(status_fd); /* the command's copy reports; ours would hold the pipe open */
        if (fds[1] >= 0) close(fds[1]);
        if (fds[2] >= 0) close(fds[2]);
        /* On a PTY of its own (a stockade session), the supervisor takes it as controlling
         * terminal and gives the foreground to the command's group, so Ctrl-C reaches it. A
         * terminal that already belongs to another session (the user's) is left alone. */
        if (isatty(0) && ioctl(0, TIOCSCTTY, 0) == 0) tcsetpgrp(0, child);
        int listener = -1;
        if (pair[0] >= 0) {
            close(pair[1]);
            listener = guard_receive(pair[0]);
        }
        return supervise(child, signals, listener);
    }
    close(signals);
    if (sigprocmask(SIG_SETMASK, &old, NULL) != 0) fail("sigprocmask", errno);
    if (setpgid(0, 0) != 0) fail("setpgid", errno); /* its own group: the one that gets killed */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) fail("pdeathsig", errno);
    if (getppid() != supervisor) fail("parent", ESRCH);
    if (fds[1] >= 0) restrict_self(fds[1]); /* a domain nested in the supervisor's */
    if (pair[1] >= 0) {
        const char *what;
        close(pair[0]);
        int err = guard_install(pair[1], &what); /* before the filter that refuses new listeners */
        if (err) fail(what, err);
    }
    if (fds[2] >= 0) install_seccomp(fds[2]);
    apply_limits();
    execvp(argv[6], argv + 6);
    fail("exec", errno);
    return 127;
}
