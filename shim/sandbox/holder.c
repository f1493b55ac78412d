/*
 * wasm-shim-sandbox-holder: the process that holds one pod's namespaces for the shim daemon.
 *
 * containerd's CRI builds every container's namespace paths from the sandbox's pid (/proc/PID/ns/net, ipc, uts,
 * pid: internal/cri/opts/spec_opts.go WithPodNamespaces in containerd 2.4), so a pod needs one live process
 * whose namespaces are the pod's. This is that process: no image, no runtime, no rootfs; shim/sandbox/holder.py
 * starts it (posix_spawn from a daemon thread that has unshared a PID namespace, so it is PID 1 of the pod's
 * new one) and reaps it.
 *
 * usage: wasm-shim-sandbox-holder [--netns PATH] [--new-ipc] [--new-uts] [--hostname NAME]
 *                                 [--sysctl KEY=VALUE]... --root DIR --uid N --gid N
 * fds:   0, 1 /dev/null; 2 the report pipe (one line of error text, or EOF once set up); 3 the lifeline (the
 *        read end of a pipe whose only writer is the daemon).
 *
 * In order: join the pod's network namespace, unshare a new IPC and UTS namespace, set the hostname, write the
 * pod's namespaced sysctls, chroot into DIR (an empty directory: /proc/1/root of a pod sharing its PID namespace
 * shows nothing of the host), drop to UID/GID with no groups and no capabilities, become non-dumpable (only
 * CAP_SYS_PTRACE may look into /proc/PID of it) and take no new privileges. Then close the report pipe and wait
 * on the lifeline: it reaps adopted orphans (SIGCHLD ignored: as the PID namespace's init, POSIX.1-2001 lets
 * the kernel discard their exit statuses) and exits 0 when the daemon is gone (the lifeline's writer closed),
 * so no holder outlives its daemon. Any failure is reported on fd 2 and ends it with status 1 before it holds
 * anything; a usage error with status 2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define REPORT_FD 2
#define LIFELINE_FD 3
#define MAX_SYSCTLS 64

static void fail(int status, const char *format, ...) {
    char line[512];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(line, sizeof line - 1, format, args);
    va_end(args);
    if (n < 0) n = 0;
    if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t ignored = write(REPORT_FD, line, (size_t)n);
    (void)ignored;
    _exit(status);
}

static long number(const char *flag, const char *text) {
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || !*text || *end || value < 0 || value > 0x7fffffffL) fail(2, "%s %s: not a number", flag, text);
    return value;
}

/* KEY=VALUE with KEY made of [a-z0-9_.-] (sysctl(8) names); /proc/sys/KEY with dots as slashes. */
static void write_sysctl(const char *assignment) {
    const char *equals = strchr(assignment, '=');
    if (!equals || equals == assignment) fail(2, "--sysctl %s: expected KEY=VALUE", assignment);
    char path[256] = "/proc/sys/";
    size_t at = strlen(path);
    for (const char *c = assignment; c < equals; c++) {
        char ch = *c;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '.'))
            fail(2, "--sysctl %s: a key is letters, digits, '_', '-' and '.'", assignment);
        if (at + 1 >= sizeof path) fail(2, "--sysctl %s: key too long", assignment);
        path[at++] = ch == '.' ? '/' : ch;
    }
    path[at] = '\0';
    if (strstr(path, "//") || path[at - 1] == '/') fail(2, "--sysctl %s: not a sysctl name", assignment);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) fail(1, "sysctl %.*s: %s", (int)(equals - assignment), assignment, strerror(errno));
    const char *value = equals + 1;
    size_t length = strlen(value);
    if (write(fd, value, length) != (ssize_t)length)
        fail(1, "sysctl %.*s=%s: %s", (int)(equals - assignment), assignment, value, strerror(errno));
    close(fd);
}

int main(int argc, char **argv) {
    const char *netns = NULL, *hostname = NULL, *root = NULL;
    const char *sysctls[MAX_SYSCTLS];
    int n_sysctls = 0, new_ipc = 0, new_uts = 0;
    long uid = -1, gid = -1;

    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        int has_value = i + 1 < argc;
        if (!strcmp(flag, "--new-ipc")) new_ipc = 1;
        else if (!strcmp(flag, "--new-uts")) new_uts = 1;
        else if (!strcmp(flag, "--netns") && has_value) netns = argv[++i];
        else if (!strcmp(flag, "--hostname") && has_value) hostname = argv[++i];
        else if (!strcmp(flag, "--root") && has_value) root = argv[++i];
        else if (!strcmp(flag, "--uid") && has_value) uid = number(flag, argv[++i]);
        else if (!strcmp(flag, "--gid") && has_value) gid = number(flag, argv[++i]);
        else if (!strcmp(flag, "--sysctl") && has_value) {
            if (n_sysctls == MAX_SYSCTLS) fail(2, "more than %d --sysctl", MAX_SYSCTLS);
            sysctls[n_sysctls++] = argv[++i];
        } else fail(2, "unknown or incomplete argument %s", flag);
    }
    if (!root || uid < 0 || gid < 0) fail(2, "--root, --uid and --gid are required");
    if (hostname && !new_uts) fail(2, "--hostname needs --new-uts (the host's name is not the pod's to change)");
    if (fcntl(LIFELINE_FD, F_GETFD) < 0) fail(2, "no lifeline on fd %d", LIFELINE_FD);
    /* Nothing but stdio, the report pipe and the lifeline: an fd of the daemon's kept here would keep its peer
       from seeing EOF. */
    if (close_range(LIFELINE_FD + 1, ~0U, 0) < 0) fail(1, "close_range: %s", strerror(errno));

    if (netns) {
        int fd = open(netns, O_RDONLY | O_CLOEXEC);
        if (fd < 0) fail(1, "network namespace %s: %s", netns, strerror(errno));
        if (setns(fd, CLONE_NEWNET) < 0) fail(1, "joining network namespace %s: %s", netns, strerror(errno));
        close(fd);
    }
    int flags = (new_ipc ? CLONE_NEWIPC : 0) | (new_uts ? CLONE_NEWUTS : 0);
    if (flags && unshare(flags) < 0) fail(1, "unshare (IPC/UTS): %s", strerror(errno));
    if (hostname && sethostname(hostname, strlen(hostname)) < 0)
        fail(1, "hostname %s: %s", hostname, strerror(errno));
    for (int i = 0; i < n_sysctls; i++) write_sysctl(sysctls[i]);

    if (chroot(root) < 0 || chdir("/") < 0) fail(1, "chroot %s: %s", root, strerror(errno));
    if (setgroups(0, NULL) < 0 || setgid((gid_t)gid) < 0 || setuid((uid_t)uid) < 0)
        fail(1, "dropping to uid %ld gid %ld: %s", uid, gid, strerror(errno));
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        fail(1, "prctl: %s", strerror(errno));
    signal(SIGCHLD, SIG_IGN);

    /* Set up: EOF on the report pipe tells the daemon so. */
    if (dup2(1, REPORT_FD) < 0) fail(1, "dup2: %s", strerror(errno));

    struct pollfd lifeline = {.fd = LIFELINE_FD, .events = POLLIN};
    for (;;) {
        int ready = poll(&lifeline, 1, -1);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) return 1;
        if (lifeline.revents) return 0; /* POLLHUP: the daemon's end closed */
    }
}
