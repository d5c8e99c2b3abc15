/* Passing one file descriptor over a unix socket (SCM_RIGHTS): the guard hands its seccomp
 * listener to the supervisor, the bridge hands each connection to the proxy. */
#ifndef STOCKADE_FDPASS_H
#define STOCKADE_FDPASS_H
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

union fd_control {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
};

/* 0, or -1 with errno set; retries EINTR. */
static inline int send_fd(int sock, int fd, int flags) {
    char byte = 'F';
    struct iovec iov = {&byte, 1};
    union fd_control control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    while (sendmsg(sock, &msg, flags) < 0)
        if (errno != EINTR) return -1;
    return 0;
}

/* The fd one send_fd() passed (close-on-exec), or -1 when none came. */
static inline int recv_fd(int sock) {
    char byte;
    struct iovec iov = {&byte, 1};
    union fd_control control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    ssize_t n;
    while ((n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
    }
    struct cmsghdr *cmsg = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
    if (!cmsg || cmsg->cmsg_type != SCM_RIGHTS) return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(cmsg), sizeof(int));
    return fd;
}
#endif
