/* openfiles: usage `openfiles DIR COUNT`. Creates and opens DIR/f0 .. DIR/f{COUNT-1}, keeping every one open, then
 * prints "opened COUNT" and exits 0. When an open fails it prints "open failed at N: reason" and exits 2. Used to
 * test a guest opening thousands of files in its preopens. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: openfiles DIR COUNT\n");
        return 1;
    }
    unsigned long count = strtoul(argv[2], NULL, 10);
    char path[4096];
    for (unsigned long i = 0; i < count; i++) {
        snprintf(path, sizeof path, "%s/f%lu", argv[1], i);
        int fd = open(path, O_CREAT | O_RDWR, 0644);
        if (fd < 0) {
            printf("open failed at %lu: %s\n", i, strerror(errno));
            return 2;
        }
    }
    printf("opened %lu\n", count);
    return 0;
}
