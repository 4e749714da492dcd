/* yurt-supervise: the small compiled supervisor a task's executor becomes once the task runs.
 *
 * The Python executor (yurt/client/executor.py) does all the set-up (network namespace, the
 * sandbox, the pipes, pid_file), then execv's this program: same pid, so the task stays its
 * child and the task dir's lock (an inherited fd) stays held. From then on this process alone
 * supervises the task, in ~1 MB instead of a Python interpreter's 25-35 MB:
 *
 *   - pumps the task's stdout/stderr pipes into rotating files under logs_dir, with the names
 *     and rules of client/logrotate.py (FileRotator): <task>.stdout.<n>, writing goes on in the
 *     newest existing file, a file full at max_size opens the next index, files older than the
 *     newest max_files are deleted;
 *   - forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 to the task's process group;
 *   - when the task ends: kills what is left of its group (raw_exec), drains the pipes (5 s at
 *     most), reads the cgroup's OOM counter and removes the cgroup (exec), and writes
 *     status_file atomically (a temporary file, fsync, rename) with the executor's JSON keys:
 *     exit_code, signal, oom_killed, finished_at.
 *
 * Arguments, each key=value:
 *   pid=<task pid>  status=<status file>  out=<fd>  err=<fd>  (-1: logs disabled)
 *   logs=<dir>  task=<name>  files=<max files>  size=<max bytes>  group_kill=0|1
 *   reports=<fd> (the sandbox's report pipe: JSON lines, {"exit": <wait status>} is the task's)
 *   cgroup=<dir> (repeated)  oom_file=<file>  oom_key=oom_kill|failcnt
 * The signals it forwards and SIGCHLD arrive blocked (the executor blocks them before execv, so
 * none is lost in between); it reads them from a signalfd.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DRAIN_MS 5000
#define MAX_CGROUPS 8

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

struct rotator {
    int fd;              /* the pipe read end, -1 when closed */
    int file;            /* the current log file */
    long long index;
    long long size;
    char base[512];      /* "<task>.stdout" */
};

static const char *logs_dir = "";
static long long max_files = 10, max_size = 10LL * 1024 * 1024;

static void die(const char *what) {
    fprintf(stderr, "yurt-supervise: %s: %s\n", what, strerror(errno));
    exit(1);
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* index of "<base>.<digits>", or -1 */
static long long index_of(const char *name, const char *base) {
    size_t n = strlen(base);
    if (strncmp(name, base, n) != 0 || name[n] != '.' || name[n + 1] == '\0')
        return -1;
    long long v = 0;
    for (const char *p = name + n + 1; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

static void rot_open(struct rotator *r) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.%lld", logs_dir, r->base, r->index);
    r->file = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (r->file < 0)
        die(path);
    struct stat st;
    r->size = fstat(r->file, &st) == 0 ? (long long)st.st_size : 0;
}

static void rot_purge(struct rotator *r) {
    DIR *d = opendir(logs_dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        long long i = index_of(e->d_name, r->base);
        if (i >= 0 && i <= r->index - max_files) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", logs_dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
}

static void rot_init(struct rotator *r, int fd, const char *task, const char *stream) {
    r->fd = fd;
    r->file = -1;
    r->index = 0;
    if (fd < 0)
        return;
    snprintf(r->base, sizeof r->base, "%s.%s", task, stream);
    DIR *d = opendir(logs_dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            long long i = index_of(e->d_name, r->base);
            if (i > r->index)
                r->index = i;
        }
        closedir(d);
    }
    rot_open(r);
}

static void rot_write(struct rotator *r, const char *buf, ssize_t len) {
    while (len > 0) {
        long long room = max_size - r->size;
        if (room <= 0) {
            close(r->file);
            r->index++;
            rot_open(r);
            rot_purge(r);
            continue;
        }
        ssize_t chunk = len < room ? len : (ssize_t)room;
        ssize_t w = write(r->file, buf, (size_t)chunk);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* a full disk loses output, never the task */
        }
        r->size += w;
        buf += w;
        len -= w;
    }
}

/* read once from a readable pipe; closes it at EOF */
static void rot_pump(struct rotator *r) {
    char buf[65536];
    ssize_t n = read(r->fd, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        close(r->fd);
        r->fd = -1;
        return;
    }
    rot_write(r, buf, n);
}

static char *read_file(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    ssize_t n;
    while (buf && (n = read(fd, buf + len, cap - len)) > 0) {
        len += (size_t)n;
        if (len == cap) {
            cap *= 2;
            char *more = realloc(buf, cap + 1);
            if (!more) {
                free(buf);
                buf = NULL;
            }
            buf = more;
        }
    }
    close(fd);
    if (buf)
        buf[len] = '\0';
    return buf;
}

/* the number after "<key> " at the start of a line of text; 0 when absent */
static long long counter(const char *text, const char *key) {
    size_t n = strlen(key);
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, key, n) == 0 && line[n] == ' ')
            return atoll(line + n + 1);
    }
    return 0;
}

static int oom_killed(const char *file, const char *key) {
    if (!file || !*file)
        return 0;
    char *text = read_file(file);
    if (!text)
        return 0;
    long long v = strcmp(key, "failcnt") == 0 ? atoll(text) : counter(text, key);
    free(text);
    return v > 0;
}

/* kill what is left in each cgroup and remove it, for up to 5 s (Cgroup.destroy) */
static void destroy_cgroups(char **dirs, int n) {
    long long deadline = now_ms() + 5000;
    int left = n;
    while (left > 0) {
        for (int i = 0; i < n; i++) {
            if (!dirs[i])
                continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/cgroup.procs", dirs[i]);
            char *procs = read_file(path);
            for (char *p = procs; p && *p;) {
                char *end;
                long pid = strtol(p, &end, 10);
                if (end == p)
                    break;
                if (pid > 0)
                    kill((pid_t)pid, SIGKILL);
                p = end;
            }
            free(procs);
            if (rmdir(dirs[i]) == 0 || errno != EBUSY) {
                dirs[i] = NULL;
                left--;
            }
        }
        if (left == 0 || now_ms() >= deadline)
            break;
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
}

static void write_status(const char *path, int code, int sig, int oom) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char json[256];
    int len = snprintf(json, sizeof json,
                       "{\"exit_code\": %d, \"signal\": %d, \"oom_killed\": %s, \"finished_at\": %lld}",
                       code, sig, oom ? "true" : "false", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    const char *slash = strrchr(path, '/');
    char tmp[4096];
    if (slash)
        snprintf(tmp, sizeof tmp, "%.*s/.%s.XXXXXX.tmp", (int)(slash - path), path, slash + 1);
    else
        snprintf(tmp, sizeof tmp, ".%s.XXXXXX.tmp", path);
    int fd = mkstemps(tmp, 4);
    if (fd < 0)
        die("cannot create the status file");
    if (write(fd, json, (size_t)len) != len || fsync(fd) != 0 || fchmod(fd, 0644) != 0) {
        unlink(tmp);
        die("cannot write the status file");
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        die("cannot rename the status file");
    }
}

int main(int argc, char **argv) {
    pid_t task = 0;
    const char *status_file = NULL, *task_name = "task", *oom_file = NULL, *oom_key = "oom_kill";
    int out = -1, err = -1, reports = -1, group_kill = 1, ncg = 0;
    char *cgroups[MAX_CGROUPS];
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "yurt-supervise: argument %s: expected key=value\n", argv[i]);
            return 2;
        }
        *eq = '\0';
        const char *k = argv[i], *v = eq + 1;
        if (!strcmp(k, "pid")) task = (pid_t)atol(v);
        else if (!strcmp(k, "status")) status_file = v;
        else if (!strcmp(k, "out")) out = atoi(v);
        else if (!strcmp(k, "err")) err = atoi(v);
        else if (!strcmp(k, "reports")) reports = atoi(v);
        else if (!strcmp(k, "logs")) logs_dir = v;
        else if (!strcmp(k, "task")) task_name = v;
        else if (!strcmp(k, "files")) max_files = atoll(v) > 0 ? atoll(v) : 1;
        else if (!strcmp(k, "size")) max_size = atoll(v) > 0 ? atoll(v) : 1;
        else if (!strcmp(k, "group_kill")) group_kill = atoi(v);
        else if (!strcmp(k, "cgroup") && ncg < MAX_CGROUPS) cgroups[ncg++] = eq + 1;
        else if (!strcmp(k, "oom_file")) oom_file = v;
        else if (!strcmp(k, "oom_key")) oom_key = v;
        else {
            fprintf(stderr, "yurt-supervise: unknown argument %s\n", k);
            return 2;
        }
    }
    if (task <= 0 || !status_file) {
        fprintf(stderr, "yurt-supervise: pid= and status= are required\n");
        return 2;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1); /* the sandbox's init stays our child */

    sigset_t mask;
    sigemptyset(&mask);
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
        sigaddset(&mask, forwarded[i]);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        die("signalfd");

    struct rotator rot[2];
    rot_init(&rot[0], out, task_name, "stdout");
    rot_init(&rot[1], err, task_name, "stderr");

    int done = 0, wstatus = 0, have_status = 0;
    long long deadline = -1;
    char rbuf[4096];
    size_t rlen = 0;
    int reported = 0, reported_status = 0;
    for (;;) {
        /* reap: the task, and whatever else was re-parented to us */
        for (;;) {
            int st;
            pid_t p = waitpid(-1, &st, WNOHANG);
            if (p <= 0)
                break;
            if (p == task && !done) {
                done = 1;
                wstatus = st;
                have_status = 1;
                if (group_kill)
                    kill(-task, SIGKILL); /* what the task left behind in its group */
                deadline = now_ms() + DRAIN_MS;
            }
        }
        if (done && rot[0].fd < 0 && rot[1].fd < 0 && reports < 0)
            break;
        if (done && now_ms() >= deadline)
            break;
        struct pollfd fds[4];
        int nfds = 0;
        fds[nfds++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        fds[nfds++] = (struct pollfd){.fd = rot[0].fd, .events = POLLIN};
        fds[nfds++] = (struct pollfd){.fd = rot[1].fd, .events = POLLIN};
        fds[nfds++] = (struct pollfd){.fd = reports, .events = POLLIN};
        int timeout = done ? (int)(deadline - now_ms()) : -1;
        if (done && timeout < 0)
            timeout = 0;
        int n = poll(fds, (nfds_t)nfds, timeout);
        if (n < 0 && errno != EINTR)
            die("poll");
        if (n <= 0)
            continue;
        if (fds[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == sizeof si) {
                if ((int)si.ssi_signo != SIGCHLD && !done)
                    kill(-task, (int)si.ssi_signo);
                if ((int)si.ssi_signo == SIGCHLD)
                    break; /* reaped at the top of the loop */
            }
        }
        for (int i = 0; i < 2; i++)
            if (rot[i].fd >= 0 && (fds[1 + i].revents & (POLLIN | POLLHUP | POLLERR)))
                rot_pump(&rot[i]);
        if (reports >= 0 && (fds[3].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t r = read(reports, rbuf + rlen, sizeof rbuf - 1 - rlen);
            if (r <= 0 && !(r < 0 && errno == EINTR)) {
                close(reports);
                reports = -1;
            } else if (r > 0) {
                rlen += (size_t)r;
                rbuf[rlen] = '\0';
                char *nl;
                while ((nl = strchr(rbuf, '\n')) != NULL) {
                    *nl = '\0';
                    char *e = strstr(rbuf, "\"exit\":");
                    if (e) {
                        reported = 1;
                        reported_status = atoi(e + 7);
                    }
                    size_t used = (size_t)(nl + 1 - rbuf);
                    memmove(rbuf, nl + 1, rlen - used + 1);
                    rlen -= used;
                }
                if (rlen == sizeof rbuf - 1)
                    rlen = 0; /* a line this long is not a report */
            }
        }
    }
    for (int i = 0; i < 2; i++) {
        if (rot[i].fd >= 0)
            close(rot[i].fd);
        if (rot[i].file >= 0)
            close(rot[i].file);
    }
    /* the sandbox's init reports the task's own wait status; its own is the fallback */
    int st = reported ? reported_status : (have_status ? wstatus : SIGKILL);
    int code = 0, sig = 0;
    if (WIFEXITED(st))
        code = WEXITSTATUS(st);
    else if (WIFSIGNALED(st))
        sig = WTERMSIG(st);
    int oom = 0;
    if (ncg > 0) {
        oom = oom_killed(oom_file, oom_key);
        destroy_cgroups(cgroups, ncg);
    }
    write_status(status_file, code, sig, oom);
    return 0;
}
