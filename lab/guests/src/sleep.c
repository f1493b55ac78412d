/* sleep: usage `sleep [SECONDS [COUNT]]` (defaults 1 and forever). Prints "sleeping SECONDS s" once, then sleeps
 * SECONDS seconds COUNT times (in poll_oneoff), then prints "slept" and exits 0. An idle container. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    unsigned seconds = argc > 1 ? (unsigned)atoi(argv[1]) : 1;
    long count = argc > 2 ? atol(argv[2]) : -1;
    printf("sleeping %u s\n", seconds);
    fflush(stdout);
    for (long i = 0; count < 0 || i < count; i++) {
        sleep(seconds);
    }
    puts("slept");
    return 0;
}
