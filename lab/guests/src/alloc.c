/* alloc: usage `alloc [MAX_MIB [abort]]`. Grows its heap in 1 MiB chunks, touching every page, printing the running
 * total in MiB after each chunk, until malloc fails or MAX_MIB is reached (default: no maximum). On a failed malloc it
 * prints "malloc failed at N MiB" and exits 0, or with `abort` traps (like a runtime that aborts on OOM). On reaching
 * MAX_MIB it prints "reached N MiB" and exits 0. Used to test memory limits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK (1024 * 1024)

/* Every chunk escapes through this volatile pointer, so the compiler cannot elide malloc or memset. */
static char *volatile newest;

int main(int argc, char **argv) {
    unsigned long max = argc > 1 ? strtoul(argv[1], NULL, 10) : 0;
    int abort_on_failure = argc > 2 && strcmp(argv[2], "abort") == 0;
    unsigned long total = 0;
    while (max == 0 || total < max) {
        char *p = malloc(CHUNK);
        if (p == NULL) {
            printf("malloc failed at %lu MiB\n", total);
            fflush(stdout);
            if (abort_on_failure) {
                __builtin_trap();
            }
            return 0;
        }
        memset(p, 0xA5, CHUNK);
        newest = p;
        total++;
        printf("%lu MiB\n", total);
        fflush(stdout);
    }
    printf("reached %lu MiB\n", total);
    return 0;
}
