/* alloc: grows its heap in 1 MiB chunks, touching every page, printing the running total in MiB after each chunk,
 * until malloc fails; then prints "malloc failed at N MiB" and exits 0. Used to test memory limits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK (1024 * 1024)

/* Every chunk escapes through this volatile pointer, so the compiler cannot elide malloc or memset. */
static char *volatile newest;

int main(void) {
    unsigned long total = 0;
    for (;;) {
        char *p = malloc(CHUNK);
        if (p == NULL) {
            break;
        }
        memset(p, 0xA5, CHUNK);
        newest = p;
        total++;
        printf("%lu MiB\n", total);
        fflush(stdout);
    }
    printf("malloc failed at %lu MiB\n", total);
    return 0;
}
