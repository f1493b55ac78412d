/* hello: prints one line to stdout and exits 0. The smallest useful guest. */
#include <stdio.h>

int main(void) {
    puts("hello from wasm");
    return 0;
}
