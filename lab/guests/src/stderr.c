/* stderr: writes one line to stderr (and nothing to stdout), exits 0. */
#include <stdio.h>

int main(void) {
    fputs("written to stderr by wasm\n", stderr);
    return 0;
}
