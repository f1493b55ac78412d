/* spin: loops forever without calling the host. Only epoch interruption can stop it. */
#include <stdio.h>

int main(void) {
    puts("spinning");
    fflush(stdout);
    volatile unsigned long counter = 0;
    for (;;) {
        counter++;
    }
}
