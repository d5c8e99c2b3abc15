/* guard: what Landlock cannot say, said by the launcher's supervisor (see guard.c). */
#ifndef STOCKADE_GUARD_H
#define STOCKADE_GUARD_H

/* Read the entries (NUL-separated "KIND\0RIGHTS\0PATH\0" records) from fd and stat them.
 * Call before any restriction. Returns 0, or an errno with *what naming the step. */
int guard_load(int fd, const char **what);

/* In the command, before exec: install the notify filter and hand its listener to the
 * supervisor over `sock`. Returns 0 or an errno with *what naming the step. */
int guard_install(int sock, const char **what);

/* In the supervisor: receive the listener from `sock` (-1 if the command failed first). */
int guard_receive(int sock);

/* Where refusals are reported ("OP\tPATH\tPATH2\n" per refused call; -1: nowhere). */
extern int guard_report_fd;

/* Answer one notification waiting on `listener`. */
void guard_serve_one(int listener);

#endif
