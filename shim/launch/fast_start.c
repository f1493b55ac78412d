/*
 * containerd-shim-wasmtime-v1, the binary containerd execs: `start` for a daemon already up, without Python.
 *
 * containerd execs the shim binary for every pod sandbox (and, on containerd 1.6-2.2, every container) with
 * `start` and waits for the address it prints (docs/protocol.md "The shim binary"). The Python launcher
 * (binary.py) does that in about 5 ms of interpreter start plus its own work; this program does it in well under
 * a millisecond when the answer is already known: after each start it answered, binary.py leaves a *hint* keyed by
 * everything that decides the answer (the flags, containerd's stdin, the environment containerd gives, and the
 * config files it read, by inode, size and times), and this program, given the same inputs, finds the hint,
 * checks that the files are unchanged and that the daemon answers on its socket (under the group's lock, as
 * binary.py does), writes the bundle's `address` file and prints the answer. Anything else (another action, no
 * hint, a changed file, a daemon that does not answer, stdin over 1 MiB) execs the Python launcher beside this
 * file's real path (`containerd-shim-wasmtime-v1.py`) with the same arguments and the same stdin bytes.
 *
 * The key is sha256 over, each followed by a NUL byte: the tag "wasm-shim-start-hint-v1", the -address and
 * -namespace flags, the environment's NAMESPACE, TTRPC_ADDRESS, GRPC_ADDRESS and MAX_SHIM_VERSION (each
 * "NAME=value", or "NAME" when unset), every WASM_SHIM_* variable ("NAME=value", sorted by bytes); then the stdin
 * bytes without their field 1 (the id of what is started: containerd 2.x puts it there, and it decides nothing
 * under the "namespace" grouping), their length first as 16 hex digits. The -id is not in it: hints are written only for the grouping
 * "namespace", where the container decides nothing. binary.py (contract.hint_key) computes the same key, which
 * tests/integration/test_fast_start.py checks.
 *
 * Trust: hints live in HINT_DIR, a directory that must be owned by root, mode 0700 and not a link; a hint must be
 * a regular root-owned file (opened without following links). Its lines: "wasm-shim-hint 1", the socket path, the
 * address to write, the answer in hex, then "file PATH INO SIZE MTIME_NS CTIME_NS" or "none PATH" per config file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define HINT_DIR "/run/wasm-shim/start-hints"
#define MAX_STDIN (1 << 20)
#define MAX_HINT 16384
#define TAG "wasm-shim-start-hint-v1"

extern char **environ;

/* --- SHA-256 (FIPS 180-4) --------------------------------------------------------------------------------- */
typedef struct {
    uint32_t h[8];
    uint64_t length;
    unsigned char block[64];
    size_t used;
} sha256;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(sha256 *s, const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void sha256_init(sha256 *s) {
    static const uint32_t init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, init, sizeof init);
    s->length = 0;
    s->used = 0;
}

static void sha256_update(sha256 *s, const void *data, size_t n) {
    const unsigned char *p = data;
    s->length += n;
    while (n) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->block + s->used, p, take);
        s->used += take; p += take; n -= take;
        if (s->used == 64) { sha256_block(s, s->block); s->used = 0; }
    }
}

static void sha256_hex(sha256 *s, char out[65]) {
    uint64_t bits = s->length * 8;
    unsigned char pad = 0x80, zero = 0, len[8];
    sha256_update(s, &pad, 1);
    while (s->used != 56) sha256_update(s, &zero, 1);
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(s, len, 8);
    for (int i = 0; i < 8; i++) snprintf(out + 8 * i, 9, "%08x", s->h[i]);
}

static void feed(sha256 *s, const char *text) { sha256_update(s, text, strlen(text) + 1); }

/* --- the fallback: the Python launcher, with the same arguments and stdin ---------------------------------- */
static unsigned char *input;
static size_t input_length;

static void python(char **argv) {
    char self[PATH_MAX + 4];
    ssize_t n = readlink("/proc/self/exe", self, PATH_MAX);
    if (n > 0) {
        self[n] = '\0';
    } else if (strchr(argv[0], '/') == NULL || realpath(argv[0], self) == NULL) {
        /* No /proc (a chroot without it, as the installer's preflight may run us): the path we were run by. */
        perror("containerd-shim-wasmtime-v1: /proc/self/exe");
        _exit(1);
    }
    strcat(self, ".py");
    if (input != NULL) { /* stdin was read: hand the same bytes on */
        int fd = memfd_create("shim-stdin", MFD_CLOEXEC);
        if (fd < 0 || write(fd, input, input_length) != (ssize_t)input_length || lseek(fd, 0, SEEK_SET) != 0 ||
            dup2(fd, 0) < 0) {
            perror("containerd-shim-wasmtime-v1: passing stdin on");
            _exit(1);
        }
    }
    argv[0] = self;
    execv(self, argv);
    fprintf(stderr, "containerd-shim-wasmtime-v1: cannot run %s: %s\n", self, strerror(errno));
    _exit(1);
}

/* --- the fast path ---------------------------------------------------------------------------------------- */
static int by_bytes(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int is_flag(const char *name, size_t length, const char *flag) {
    return length == strlen(flag) && !strncmp(name, flag, length);
}

static void feed_env(sha256 *s, const char *name) {
    const char *value = getenv(name);
    char line[8192];
    if (value) snprintf(line, sizeof line, "%s=%s", name, value);
    else snprintf(line, sizeof line, "%s", name);
    feed(s, line);
}

/* All of stdin (what the fallback hands on, whatever its size); -1 when it is more than the fast path takes. */
static int read_stdin(void) {
    if (isatty(0)) return 0; /* run by hand: like binary.py, no options */
    size_t capacity = 65536;
    input = malloc(capacity);
    if (!input) return -1;
    for (;;) {
        if (input_length == capacity) {
            if (capacity >= (size_t)1 << 30) { perror("containerd-shim-wasmtime-v1: stdin"); _exit(1); }
            capacity *= 2;
            unsigned char *bigger = realloc(input, capacity);
            if (!bigger) return -1;
            input = bigger;
        }
        ssize_t got = read(0, input + input_length, capacity - input_length);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return 0; /* no readable stdin: none, as binary.py reads it */
        if (got == 0) return input_length > MAX_STDIN ? -1 : 0;
        input_length += (size_t)got;
    }
}

static int trusted_dir(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == 0 && (st.st_mode & 077) == 0;
}

static int hexval(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* One base-128 varint at in[*pos] into *value; 0 when it runs past n or past 64 bits (contract.without_id). */
static int varint(const unsigned char *in, size_t n, size_t *pos, uint64_t *value) {
    uint64_t v = 0;
    for (unsigned shift = 0;; shift += 7) {
        if (*pos >= n || shift > 63) return 0;
        unsigned char byte = in[(*pos)++];
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) break;
    }
    *value = v;
    return 1;
}

/* containerd's start input without its field 1 (the id containerd 2.x puts there) into out (n bytes at least);
 * the whole input when it is not a well-formed message. The same rule as contract.without_id, byte for byte. */
static size_t without_id(const unsigned char *in, size_t n, unsigned char *out) {
    size_t pos = 0, kept = 0;
    while (pos < n) {
        size_t start = pos;
        uint64_t tag, length;
        if (!varint(in, n, &pos, &tag)) goto whole;
        unsigned wire = (unsigned)(tag & 7);
        if (wire == 0) {
            for (;;) {
                if (pos >= n) goto whole;
                if (!(in[pos++] & 0x80)) break;
            }
        } else if (wire == 1 || wire == 5) {
            size_t size = wire == 1 ? 8 : 4;
            if (size > n - pos) goto whole;
            pos += size;
        } else if (wire == 2) {
            if (!varint(in, n, &pos, &length) || length > n - pos) goto whole;
            pos += (size_t)length;
        } else {
            goto whole;
        }
        if ((tag >> 3) != 1 || wire != 2) {
            memcpy(out + kept, in + start, pos - start);
            kept += pos - start;
        }
    }
    return kept;
whole:
    memcpy(out, in, n);
    return n;
}

/* 0 once the answer is written (the hint holds and its daemon answers); -1: leave it to binary.py. */
static int fast_start(const char *address, const char *ns) {
    if (read_stdin() < 0) return -1;
    sha256 s;
    sha256_init(&s);
    feed(&s, TAG);
    feed(&s, address);
    feed(&s, ns);
    feed_env(&s, "NAMESPACE");
    feed_env(&s, "TTRPC_ADDRESS");
    feed_env(&s, "GRPC_ADDRESS");
    feed_env(&s, "MAX_SHIM_VERSION");
    size_t count = 0;
    for (char **e = environ; *e; e++) count++;
    char **ours = calloc(count + 1, sizeof *ours);
    if (!ours) return -1;
    size_t n_ours = 0;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "WASM_SHIM_", 10) == 0) ours[n_ours++] = *e;
    qsort(ours, n_ours, sizeof *ours, by_bytes);
    for (size_t i = 0; i < n_ours; i++) feed(&s, ours[i]);
    unsigned char *keyed = malloc(input_length + 1);
    if (!keyed) return -1;
    size_t keyed_length = without_id(input, input_length, keyed);
    char length[17];
    snprintf(length, sizeof length, "%016zx", keyed_length);
    sha256_update(&s, length, 16);
    sha256_update(&s, keyed, keyed_length);
    free(keyed);
    char key[65];
    sha256_hex(&s, key);

    if (!trusted_dir(HINT_DIR)) return -1;
    char path[256];
    snprintf(path, sizeof path, "%s/%s", HINT_DIR, key);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    char hint[MAX_HINT + 1];
    ssize_t got = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == 0 && (st.st_mode & 077) == 0)
        got = read(fd, hint, MAX_HINT);
    close(fd);
    if (got <= 0 || got == MAX_HINT) return -1;
    hint[got] = '\0';

    char *lines[64];
    int n_lines = 0;
    for (char *line = strtok(hint, "\n"); line && n_lines < 64; line = strtok(NULL, "\n")) lines[n_lines++] = line;
    if (n_lines < 4 || strcmp(lines[0], "wasm-shim-hint 1") != 0) return -1;
    const char *socket_path = lines[1], *bundle_address = lines[2], *answer_hex = lines[3];
    for (int i = 4; i < n_lines; i++) { /* every config file as it was when the answer was made */
        char file[4096];
        unsigned long long ino, size;
        long long mtime, ctime;
        if (sscanf(lines[i], "file %4095s %llu %llu %lld %lld", file, &ino, &size, &mtime, &ctime) == 5) {
            struct stat now;
            if (stat(file, &now) != 0 || now.st_ino != ino || (unsigned long long)now.st_size != size ||
                (long long)now.st_mtim.tv_sec * 1000000000LL + now.st_mtim.tv_nsec != mtime ||
                (long long)now.st_ctim.tv_sec * 1000000000LL + now.st_ctim.tv_nsec != ctime)
                return -1;
        } else if (sscanf(lines[i], "none %4095s", file) == 1) {
            if (access(file, F_OK) == 0 || errno != ENOENT) return -1;
        } else {
            return -1;
        }
    }
    size_t hex_length = strlen(answer_hex);
    if (hex_length % 2 || hex_length / 2 > 4096) return -1;
    unsigned char answer[4096];
    for (size_t i = 0; i < hex_length / 2; i++) {
        int hi = hexval(answer_hex[2 * i]), lo = hexval(answer_hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        answer[i] = (unsigned char)(hi << 4 | lo);
    }

    /* Under the group's lock, as binary.py: a daemon deciding to exit takes it before it removes its socket. */
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof addr.sun_path) return -1;
    strcpy(addr.sun_path, socket_path);
    char lock_path[sizeof addr.sun_path + 8];
    snprintf(lock_path, sizeof lock_path, "%s.lock", socket_path);
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (lock < 0 || flock(lock, LOCK_EX) < 0) return -1;
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int alive = probe >= 0 && connect(probe, (struct sockaddr *)&addr, sizeof addr) == 0;
    if (probe >= 0) close(probe);
    close(lock);
    if (!alive) return -1;

    int out = open("address", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) return -1;
    size_t address_length = strlen(bundle_address);
    int wrote = write(out, bundle_address, address_length) == (ssize_t)address_length;
    close(out);
    if (!wrote) return -1;
    if (write(1, answer, hex_length / 2) != (ssize_t)(hex_length / 2)) _exit(1);
    return 0;
}

int main(int argc, char **argv) {
    const char *address = "", *ns = "", *action = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (arg[0] != '-' || !strcmp(arg, "-") || !strcmp(arg, "--")) { action = arg; break; }
        const char *name = arg + (arg[1] == '-' ? 2 : 1);
        const char *equals = strchr(name, '=');
        size_t name_length = equals ? (size_t)(equals - name) : strlen(name);
        const char *value = equals ? equals + 1 : NULL;
        int takes_value = is_flag(name, name_length, "namespace") || is_flag(name, name_length, "address") ||
                          is_flag(name, name_length, "publish-binary") || is_flag(name, name_length, "id") ||
                          is_flag(name, name_length, "bundle") || is_flag(name, name_length, "socket");
        if (!takes_value) continue; /* -debug, -v, ...: the Python launcher decides what they mean */
        if (!value) { if (i + 1 >= argc) break; value = argv[++i]; }
        if (is_flag(name, name_length, "namespace")) ns = value;
        else if (is_flag(name, name_length, "address")) address = value;
    }
    if (action && !strcmp(action, "start") && fast_start(address, ns) == 0) return 0;
    python(argv);
    return 1;
}
