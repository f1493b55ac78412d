/* flood: usage `flood BYTES`. Writes BYTES bytes to stdout as 64-byte lines "NNNNNNNNNNNN flood ....\n" (the line
 * number, then a fixed pattern; the last line may be cut short), in 64 KiB writes, then "flooded BYTES" on stderr
 * and exits 0. A failed write prints "flood: write failed after N bytes: reason" on stderr and exits 1. Used to
 * test a guest writing a lot to a slow or absent reader. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LINE 64
#define CHUNK (64 * 1024)

static char buffer[CHUNK];

int main(int argc, char **argv) {
    unsigned long long total = argc > 1 ? strtoull(argv[1], NULL, 10) : 0;
    unsigned long long written = 0, line = 0;
    while (written < total) {
        size_t len = 0;
        while (len < CHUNK) {
            char text[LINE + 1];
            snprintf(text, sizeof text, "%012llu flood %044d\n", line++, 0);
            memcpy(buffer + len, text, LINE);
            len += LINE;
        }
        if (len > total - written) {
            len = (size_t)(total - written);
        }
        size_t off = 0;
        while (off < len) {
            ssize_t n = write(1, buffer + off, len - off);
            if (n < 0) {
                fprintf(stderr, "flood: write failed after %llu bytes: %s\n", written + off, strerror(errno));
                return 1;
            }
            off += (size_t)n;
        }
        written += len;
    }
    fprintf(stderr, "flooded %llu\n", written);
    return 0;
}
