/* clock: prints `realtime_ns=N`, the wall clock (CLOCK_REALTIME, ns since the epoch) as the first thing main
 * does, then exits 0. The benchmarks (bench/instance_start.py) compare it with the daemon's CreateTask timestamp:
 * the guest's first instruction as seen from inside the guest. With an argument S it then sleeps S seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    printf("realtime_ns=%lld\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    fflush(stdout);
    if (argc > 1) {
        sleep((unsigned)atoi(argv[1]));
    }
    return 0;
}
