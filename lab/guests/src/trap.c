/* trap: executes the wasm `unreachable` instruction after printing a line. */
#include <stdio.h>

int main(void) {
    puts("about to trap");
    fflush(stdout);
    __builtin_trap();
}
