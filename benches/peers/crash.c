/*
 * The crashing worker of benches/peers.rs, the same binary for every supervisor it compares.
 *
 * It appends `start <unix_ns> <pid>` to a file, sleeps, appends `exit <unix_ns> <pid>` and
 * exits 1. Each line is one write() on an O_APPEND descriptor. The start stamp is the first
 * thing main does, so what a supervisor is charged for ends at this process's first
 * instruction of main, after exec and the dynamic loader.
 *
 * Usage: crash lifetime_ms file, or no arguments and $CRASH_LIFETIME_MS and $CRASH_FILE, so
 * runsv and s6-supervise can exec it directly as ./run (no shell between). When both variables
 * are set they win over argv: s6-supervise passes ./run the service directory's name. With
 * $CRASH_NOTIFY_FD set, it also writes a newline there right after the start line: s6's
 * readiness notification (notification-fd), without which s6-supervise pauses 1 s after every
 * death.
 *
 * The bench compiles it with `cc -O2` into its temp dir; C, so the worker's own start-up is
 * as small as the supervisors' and nothing of Rust's runtime sits in the numbers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void append(int fd, const char *what, long long ns) {
    char line[96];
    int n = snprintf(line, sizeof line, "%s %lld %ld\n", what, ns, (long)getpid());
    /* One write: the line lands whole, after whatever an earlier process wrote. */
    if (write(fd, line, (size_t)n) != n) {
        perror("crash: write");
    }
}

int main(int argc, char **argv) {
    long long started = now_ns();
    const char *lifetime = getenv("CRASH_LIFETIME_MS");
    const char *file = getenv("CRASH_FILE");
    if (lifetime == NULL || file == NULL) {
        lifetime = argc > 1 ? argv[1] : NULL;
        file = argc > 2 ? argv[2] : NULL;
    }
    if (lifetime == NULL || file == NULL) {
        fprintf(stderr, "usage: crash lifetime_ms file  (or $CRASH_LIFETIME_MS and $CRASH_FILE)\n");
        return 2;
    }
    char *end;
    long ms = strtol(lifetime, &end, 10);
    if (*lifetime == '\0' || *end != '\0' || ms < 0) {
        fprintf(stderr, "crash: bad lifetime_ms: %s\n", lifetime);
        return 2;
    }
    int fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "crash: cannot open %s: %s\n", file, strerror(errno));
        return 2;
    }
    append(fd, "start", started);
    const char *notify = getenv("CRASH_NOTIFY_FD");
    if (notify != NULL) {
        int nfd = atoi(notify);
        if (write(nfd, "\n", 1) != 1) {
            perror("crash: write the readiness notification");
        }
        close(nfd);
    }
    struct timespec left = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
    append(fd, "exit", now_ns());
    return 1;
}
