/* bridge: the sandbox's only way out in proxy mode.
 *
 *   llexec --bridge PORT HANDOFF PROG [ARGS...]
 *   llexec --connect SOCKET HOST PORT       (ssh's ProxyCommand: a tunnel on stdin/stdout)
 *
 * --bridge runs inside the sandbox's own network namespace (loopback only), as the command's
 * parent: it listens on 127.0.0.1:PORT, starts PROG, and hands every accepted connection, as
 * a file descriptor (SCM_RIGHTS), to the filtering proxy over the unix socket HANDOFF
 * (bind-mounted in; the proxy runs outside, in stockade). The proxy then reads and writes the
 * command's connection itself: no bytes pass through here, so the bridge adds no copy. It
 * exits with PROG's status (a signal death as 128+N) as soon as PROG ends; the sandbox's pid
 * namespace ends the rest. If the command kills it, nothing is listening any more: no network
 * path is left behind.
 */
#define _GNU_SOURCE
#include "bridge.h"
#include "fdpass.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUF (1 << 20)

static void die(const char *what) {
    dprintf(2, "stockade bridge: %s: %s\n", what, strerror(errno));
    _exit(127);
}

static int unix_connect(const char *path) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) die("connect to the proxy");
    return s;
}

static void hand_off(int handoff, int fd) {
    (void)send_fd(handoff, fd, MSG_NOSIGNAL);
    close(fd); /* the proxy holds it now (or it is refused, and the client sees it close) */
}

int bridge_main(int argc, char **argv) {
    if (argc < 4) {
        dprintf(2, "usage: llexec --bridge PORT HANDOFF PROG [ARGS...]\n");
        return 127;
    }
    int port = atoi(argv[1]);
    int handoff = unix_connect(argv[2]);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listener < 0) die("socket");
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0) die("bind 127.0.0.1");
    if (listen(listener, 512) != 0) die("listen");
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int signals = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (signals < 0) die("signalfd");
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        sigprocmask(SIG_UNBLOCK, &chld, NULL);
        execvp(argv[3], argv + 3);
        dprintf(2, "stockade: %s: %s\n", argv[3], strerror(errno));
        _exit(127);
    }
    for (;;) {
        int status;
        pid_t done;
        while ((done = waitpid(-1, &status, WNOHANG)) > 0)
            if (done == child) return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
        struct pollfd p[2] = {{.fd = signals, .events = POLLIN}, {.fd = listener, .events = POLLIN}};
        if (poll(p, 2, -1) < 0 && errno != EINTR) die("poll");
        if (p[0].revents) {
            struct signalfd_siginfo info;
            while (read(signals, &info, sizeof info) > 0) {
            }
        }
        if (p[1].revents & POLLIN) {
            int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
            if (client >= 0) hand_off(handoff, client);
        }
    }
}

/* Move what `from` has into `to`; 0 when `from` is done (its end passed on). */
static int pump(int from, int to, char *buf) {
    ssize_t n = read(from, buf, BUF);
    if (n <= 0) {
        shutdown(to, SHUT_WR);
        return 0;
    }
    for (ssize_t off = 0; off < n;) {
        ssize_t w = write(to, buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return 0;
        off += w;
    }
    return 1;
}

/* One CONNECT tunnel through the proxy, on stdin/stdout: what ssh's ProxyCommand runs. */
int connect_main(int argc, char **argv) {
    if (argc != 4) {
        dprintf(2, "usage: llexec --connect SOCKET HOST PORT\n");
        return 2;
    }
    int s = unix_connect(argv[1]);
    dprintf(s, "CONNECT %s:%s HTTP/1.1\r\nHost: %s:%s\r\n\r\n", argv[2], argv[3], argv[2], argv[3]);
    char head[8192];
    size_t len = 0;
    while (len < sizeof head - 1 && !(len >= 4 && memcmp(head + len - 4, "\r\n\r\n", 4) == 0)) {
        ssize_t n = read(s, head + len, 1); /* byte by byte: nothing past the head is consumed */
        if (n <= 0) break;
        len += (size_t)n;
    }
    head[len] = '\0';
    if (strncmp(head, "HTTP/1.1 200", 12) != 0 && strncmp(head, "HTTP/1.0 200", 12) != 0) {
        char body[4096];
        ssize_t n = read(s, body, sizeof body - 1);
        dprintf(2, "stockade proxy refused %s:%s: %.*s%.*s\n", argv[2], argv[3], (int)strcspn(head, "\r"),
                head, n > 0 ? (int)n : 0, body);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    char *buf = malloc(BUF);
    if (!buf) die("malloc");
    int up = 1, down = 1;
    while (down) { /* ssh is done when the server side closes */
        struct pollfd p[2] = {{.fd = up ? 0 : -1, .events = POLLIN}, {.fd = s, .events = POLLIN}};
        if (poll(p, 2, -1) < 0 && errno != EINTR) die("poll");
        if (up && p[0].revents) up = pump(0, s, buf);
        if (p[1].revents) down = pump(s, 1, buf);
    }
    return 0;
}
