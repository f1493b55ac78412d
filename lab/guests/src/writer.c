/* writer: writes argv[2] (plus a newline) into the file argv[1], creating or truncating it. On error prints
 * "writer: <path>: <reason>" to stderr and exits 1. Used to test read-only roots and mounts. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fputs("usage: writer PATH TEXT\n", stderr);
        return 2;
    }
    FILE *f = fopen(argv[1], "w");
    if (f == NULL) {
        fprintf(stderr, "writer: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    if (fprintf(f, "%s\n", argv[2]) < 0 || fclose(f) != 0) {
        fprintf(stderr, "writer: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    printf("wrote %s\n", argv[1]);
    return 0;
}
