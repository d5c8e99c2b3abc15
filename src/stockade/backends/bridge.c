/* bridge: the sandbox's only way out in proxy mode.
 *
 *   llexec --bridge PORT SOCKET PROG [ARGS...]
 *   llexec --connect SOCKET HOST PORT       (ssh's ProxyCommand: a tunnel on stdin/stdout)
 *
 * Runs inside the sandbox's own network namespace (loopback only), as the command's parent:
 * it listens on 127.0.0.1:PORT, starts PROG, and relays every connection to the filtering
 * proxy's unix SOCKET (bind-mounted in; the proxy runs outside, in stockade). Bytes are
 * relayed as they come, both ways; when one side closes its sending half, the other side's is
 * shut down too, and the pair is closed when both are done. It exits with PROG's status (a
 * signal death as 128+N) as soon as PROG ends; the sandbox's pid namespace ends the rest.
 * If the command kills it, the sandbox ends: no network path is left behind.
 */
#define _GNU_SOURCE
#include "bridge.h"

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

#define MAX_PAIRS 512
#define BUF 65536

struct half { /* one direction: from -> to, with what was read but not yet written */
    int from, to;
    char *buf;
    size_t len, off;
    int eof; /* `from` said it is done sending */
};

static struct half halves[2 * MAX_PAIRS]; /* pairs: [2i] client->proxy, [2i+1] proxy->client */
static int used[MAX_PAIRS];

static void die(const char *what) {
    dprintf(2, "stockade bridge: %s: %s\n", what, strerror(errno));
    _exit(127);
}

static int open_pair(int client, const char *path) {
    int slot = 0;
    while (slot < MAX_PAIRS && used[slot]) slot++;
    int proxy = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    if (slot == MAX_PAIRS || proxy < 0 || connect(proxy, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (proxy >= 0) close(proxy);
        close(client); /* refused: the client sees the connection close */
        return -1;
    }
    used[slot] = 1;
    for (int d = 0; d < 2; d++) {
        struct half *h = &halves[2 * slot + d];
        h->from = d ? proxy : client;
        h->to = d ? client : proxy;
        h->len = h->off = 0;
        h->eof = 0;
        if (!h->buf && !(h->buf = malloc(BUF))) die("malloc");
    }
    return slot;
}

static void close_pair(int slot) {
    close(halves[2 * slot].from);
    close(halves[2 * slot].to);
    used[slot] = 0;
}

/* Move what can move without blocking; returns 0 when this half is finished. */
static int pump(struct half *h) {
    if (h->len == h->off && !h->eof) {
        ssize_t n = read(h->from, h->buf, BUF);
        if (n > 0) {
            h->len = (size_t)n;
            h->off = 0;
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            h->eof = 1;
            shutdown(h->to, SHUT_WR);
        }
    }
    while (h->off < h->len) {
        ssize_t n = write(h->to, h->buf + h->off, h->len - h->off);
        if (n > 0) {
            h->off += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            break;
        } else { /* the receiver is gone: nothing more can be delivered this way */
            h->off = h->len;
            h->eof = 1;
            shutdown(h->from, SHUT_RD);
        }
    }
    return !(h->eof && h->off == h->len);
}

int bridge_main(int argc, char **argv) {
    if (argc < 4) {
        dprintf(2, "usage: llexec --bridge PORT SOCKET PROG [ARGS...]\n");
        return 127;
    }
    int port = atoi(argv[1]);
    const char *path = argv[2];
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listener < 0) die("socket");
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0) die("bind 127.0.0.1");
    if (listen(listener, 128) != 0) die("listen");
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
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int status;
        pid_t done;
        while ((done = waitpid(-1, &status, WNOHANG)) > 0)
            if (done == child) return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
        struct pollfd p[2 + 2 * MAX_PAIRS];
        int map[2 + 2 * MAX_PAIRS], n = 0;
        p[n++] = (struct pollfd){.fd = signals, .events = POLLIN};
        p[n++] = (struct pollfd){.fd = listener, .events = POLLIN};
        for (int i = 0; i < 2 * MAX_PAIRS; i++) {
            struct half *h = &halves[i];
            if (!used[i / 2]) continue;
            if (h->off < h->len) {
                p[n] = (struct pollfd){.fd = h->to, .events = POLLOUT};
                map[n++] = i;
            } else if (!h->eof) {
                p[n] = (struct pollfd){.fd = h->from, .events = POLLIN};
                map[n++] = i;
            }
        }
        if (poll(p, (nfds_t)n, -1) < 0 && errno != EINTR) die("poll");
        if (p[0].revents) {
            struct signalfd_siginfo info;
            while (read(signals, &info, sizeof info) > 0) {
            }
        }
        if (p[1].revents & POLLIN) {
            int client;
            while ((client = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0)
                open_pair(client, path);
        }
        for (int k = 2; k < n; k++) {
            if (!p[k].revents) continue;
            int i = map[k], slot = i / 2;
            if (!used[slot]) continue;
            int alive = pump(&halves[i]);
            if (!alive && !pump(&halves[i ^ 1])) close_pair(slot);
        }
    }
}

/* One CONNECT tunnel through the proxy, on stdin/stdout: what ssh's ProxyCommand runs. */
int connect_main(int argc, char **argv) {
    if (argc != 4) {
        dprintf(2, "usage: llexec --connect SOCKET HOST PORT\n");
        return 2;
    }
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", argv[1]);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) die("connect to the proxy");
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
    struct half up = {.from = 0, .to = s, .buf = malloc(BUF)}, down = {.from = s, .to = 1, .buf = malloc(BUF)};
    if (!up.buf || !down.buf) die("malloc");
    int up_alive = 1, down_alive = 1;
    while (down_alive) { /* ssh is done when the server side closes */
        struct pollfd p[2] = {{.fd = up_alive ? (up.off < up.len ? s : 0) : -1,
                               .events = up.off < up.len ? POLLOUT : POLLIN},
                              {.fd = down.off < down.len ? 1 : s, .events = down.off < down.len ? POLLOUT : POLLIN}};
        if (poll(p, 2, -1) < 0 && errno != EINTR) die("poll");
        if (up_alive && p[0].revents) up_alive = pump(&up);
        if (p[1].revents) down_alive = pump(&down);
    }
    return 0;
}
