/* cat_file: copies the file named by argv[1] ("-" = stdin) to stdout. On error prints
 * "cat_file: <path>: <reason>" to stderr and exits 1. Used to test what the guest may read (preopens, mounts)
 * and its stdin. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs("usage: cat_file PATH\n", stderr);
        return 2;
    }
    FILE *f = strcmp(argv[1], "-") == 0 ? stdin : fopen(argv[1], "rb");
    if (f == NULL) {
        fprintf(stderr, "cat_file: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        fwrite(buf, 1, n, stdout);
    }
    fclose(f);
    return 0;
}
