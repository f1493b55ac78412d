/* pause: the pod sandbox's placeholder process (what Kubernetes' pause image runs as /pause).
 *
 * Holds the pod's namespaces open by doing nothing: sleeps in pause() until SIGTERM or SIGINT, then exits 0
 * (a clean sandbox stop). As PID 1 of its PID namespace it also reaps any orphans re-parented to it (SIGCHLD).
 * Built natively and statically (gcc -static) by build.sh: it runs under the native engine (runc), never wasm.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction action = {0};
    sigemptyset(&action.sa_mask);
    action.sa_handler = stop;
    if (sigaction(SIGTERM, &action, NULL) != 0 || sigaction(SIGINT, &action, NULL) != 0) {
        return 1;
    }
    action.sa_handler = reap;
    action.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &action, NULL) != 0) {
        return 1;
    }
    for (;;) {
        pause();
    }
}
