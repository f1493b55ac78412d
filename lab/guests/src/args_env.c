/* args_env: prints "argv[i]=<arg>" for every argument, then "env=<K=V>" for every environment entry,
 * one per line, in order. */
#include <stdio.h>

extern char **environ;

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        printf("argv[%d]=%s\n", i, argv[i]);
    }
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        printf("env=%s\n", *e);
    }
    return 0;
}
