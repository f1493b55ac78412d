/* gettid(2) for a program linked against glibc older than 2.30.
 *
 * Rust's standard library calls gettid(), which glibc exports only from 2.30 (GLIBC_2.30); the kernel has had the
 * system call since Linux 2.4.11. Linked into the component runner, this definition satisfies std's reference, so
 * the binary imports no GLIBC_2.30 symbol and loads on glibc 2.28 (RHEL 8, Debian 10). Same behaviour as glibc's
 * own wrapper (sysdeps/unix/sysv/linux/gettid.c: an inline syscall, no errno case: gettid cannot fail).
 */
#include <sys/syscall.h>
#include <sys/types.h>

long syscall(long number, ...);

pid_t gettid(void) {
    return (pid_t)syscall(SYS_gettid);
}
