/* lineage run's LD_PRELOAD interposer: records the files every dynamically linked process
 * of a run opens, creates, renames and removes, whatever language it is written in.
 *
 * Built by lineage_client.capture.native with the system C compiler on first use and
 * cached per user, keyed by the digest of this file. Loaded into every process of the run
 * through LD_PRELOAD (re-added to the environment of each exec that dropped it). Records go
 * to trace files in $LINEAGE_TRACE_DIR (named *.atrace; a forked child shares its parent's)
 * in the audit hook's record format (see _boot/sitecustomize.py), but appended whole, one
 * write(2) per record on an O_APPEND descriptor, with no chunks or zero fill:
 *
 *   r  <t> <t> <path>                 opened for reading (successfully)
 *   w  <t> <t> <path>                 opened for writing, created, truncated
 *   i  <t> <t> <path> <identity>      the path just before that write-open:
 *                                     dev:ino:size:mtime_ns:ctime_ns, or "-" if absent
 *   m  <t> <t> <src> <dst>            renamed
 *   d  <t> <t> <path>                 removed
 *   S  <t> <t> <program> <why>        an exec this library cannot follow into
 *                                     (static, setuid, 32-bit or Go program)
 *   T  <t> <t> <strace output> <cwd>  such a program, run under strace instead (when the
 *                                     wrapper wrote <trace_dir>/strace.argv)
 *
 * Blind spots (documented in docs/capture.md): static programs, Go programs (which make
 * their system calls without libc even when dynamically linked), raw syscall(2), io_uring,
 * and libc's internal opens that do not go through these symbols. Paths under the folders
 * of $LINEAGE_TRACE_EXCLUDE (colon-separated) and the system folders are not written out.
 * The library never changes what a call returns or errno. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_EXCLUDED 64
#define LINE_MAX_BYTES (4 * PATH_MAX + 256)

extern char **environ;

static char trace_dir[PATH_MAX];
static size_t trace_dir_len;
/* "<folder of trace_dir>/lineage-trace-": the trace folders of nested lineage runs. */
static char trace_siblings[PATH_MAX];
static size_t trace_siblings_len;
static const char *excluded[MAX_EXCLUDED];
static size_t excluded_len[MAX_EXCLUDED];
static int excluded_count;
static int enabled;

/* The trace file; checked against its identity before each write, so that a process that
 * closed every descriptor (and reused the number) never gets our records. A forked child
 * keeps appending to its parent's file: records are whole lines, each one write(2) with
 * O_APPEND, so processes sharing a file never tear each other's lines. */
static int trace_fd = -1;
static dev_t trace_dev;
static ino_t trace_ino;
static unsigned file_counter;
static __thread int busy;

static const char *const system_prefixes[] = {"/proc/", "/sys/", "/dev/", "/usr/", "/etc/",
                                              "/lib", "/bin/", "/sbin/", "/run/", "/var/lib/"};

static char excluded_storage[8192];

/* What this library needs in a child's environment: added to an exec's environment that
 * dropped it ("NAME=value" as this process started with it). */
static const char *const carried[] = {"LD_PRELOAD", "LINEAGE_TRACE_DIR", "LINEAGE_TRACE_EXCLUDE",
                                      "LINEAGE_HOOK_OPENS"};
#define CARRIED (sizeof(carried) / sizeof(carried[0]))
static char carried_entry[CARRIED][PATH_MAX + 8192];

__attribute__((constructor)) static void lineage_init(void) {
    const char *dir = getenv("LINEAGE_TRACE_DIR");
    if (dir == NULL || dir[0] != '/' || strlen(dir) >= sizeof(trace_dir) - 64) return;
    /* strace running a program this library handed over to it: strace's own calls are no
     * part of the run, and its exec must not be handed over again. */
    char self[PATH_MAX];
    ssize_t length = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (length > 0) {
        self[length] = '\0';
        const char *base = strrchr(self, '/');
        if (strcmp(base != NULL ? base + 1 : self, "strace") == 0) return;
    }
    strcpy(trace_dir, dir);
    trace_dir_len = strlen(trace_dir);
    const char *slash = strrchr(trace_dir, '/');
    if (slash != NULL) {
        trace_siblings_len = (size_t)(slash - trace_dir) + 1;
        memcpy(trace_siblings, trace_dir, trace_siblings_len);
        strcpy(trace_siblings + trace_siblings_len, "lineage-trace-");
        trace_siblings_len += strlen("lineage-trace-");
    }
    const char *list = getenv("LINEAGE_TRACE_EXCLUDE");
    if (list != NULL && strlen(list) < sizeof(excluded_storage)) {
        strcpy(excluded_storage, list);
        char *save = NULL;
        for (char *item = strtok_r(excluded_storage, ":", &save);
             item != NULL && excluded_count < MAX_EXCLUDED; item = strtok_r(NULL, ":", &save)) {
            size_t len = strlen(item);
            while (len > 1 && item[len - 1] == '/') item[--len] = '\0';
            if (len <= 1) continue; /* "/" would swallow everything */
            excluded[excluded_count] = item;
            excluded_len[excluded_count++] = len;
        }
    }
    for (size_t k = 0; k < CARRIED; k++) {
        const char *value = getenv(carried[k]);
        if (value != NULL && strlen(carried[k]) + 1 + strlen(value) < sizeof(carried_entry[k]))
            snprintf(carried_entry[k], sizeof(carried_entry[k]), "%s=%s", carried[k], value);
    }
    enabled = 1;
}

#define REAL(name) static __typeof__(name) *real_##name; \
    if (real_##name == NULL) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int is_ignored(const char *path) {
    if (strncmp(path, trace_dir, trace_dir_len) == 0 &&
        (path[trace_dir_len] == '/' || path[trace_dir_len] == '\0'))
        return 1;
    if (trace_siblings_len && strncmp(path, trace_siblings, trace_siblings_len) == 0) return 1;
    for (size_t i = 0; i < sizeof(system_prefixes) / sizeof(system_prefixes[0]); i++)
        if (strncmp(path, system_prefixes[i], strlen(system_prefixes[i])) == 0) return 1;
    for (int i = 0; i < excluded_count; i++)
        if (strncmp(path, excluded[i], excluded_len[i]) == 0 &&
            (path[excluded_len[i]] == '/' || path[excluded_len[i]] == '\0'))
            return 1;
    return 0;
}

/* The absolute form of path (relative to dirfd), in out; 0 when it cannot be made. */
static int absolute(int dirfd, const char *path, char *out, size_t size) {
    if (path == NULL) return 0;
    if (path[0] == '/') {
        size_t len = strlen(path);
        if (len >= size) return 0;
        memcpy(out, path, len + 1);
        return 1;
    }
    size_t base;
    if (dirfd == AT_FDCWD) {
        if (getcwd(out, size) == NULL) return 0;
        base = strlen(out);
    } else {
        char link[64];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, out, size - 1);
        if (n <= 0) return 0;
        base = (size_t)n;
    }
    size_t len = strlen(path);
    if (base + 1 + len >= size) return 0;
    out[base] = '/';
    memcpy(out + base + 1, path, len + 1);
    return 1;
}

static char *put_escaped(char *cursor, const char *end, const char *text) {
    for (; *text != '\0' && cursor < end - 2; text++) {
        char c = *text;
        if (c == '\\' || c == '\n' || c == '\t') {
            *cursor++ = '\\';
            c = c == '\n' ? 'n' : c == '\t' ? 't' : '\\';
        }
        *cursor++ = c;
    }
    return cursor;
}

static int open_trace_file(void) {
    char name[PATH_MAX];
    for (int attempt = 0; attempt < 8; attempt++) {
        snprintf(name, sizeof(name), "%s/%d-n%u-%llx.atrace", trace_dir, (int)getpid(),
                 file_counter++, (unsigned long long)now_ns());
        int fd = (int)syscall(SYS_openat, AT_FDCWD, name,
                              O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0 || errno != EEXIST) return fd;
    }
    return -1;
}

static int same_file(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 && st.st_dev == trace_dev && st.st_ino == trace_ino;
}

/* The trace descriptor, opened on first use (and again if the process closed it). */
static int trace_descriptor(void) {
    if (trace_fd >= 0 && same_file(trace_fd)) return trace_fd;
    int fd = open_trace_file();
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return -1;
    }
    trace_fd = fd;
    trace_dev = st.st_dev;
    trace_ino = st.st_ino;
    return fd;
}

static void emit_to(int fd, char kind, const char *path, const char *extra) {
    char line[LINE_MAX_BYTES];
    char *end = line + sizeof(line);
    long long when = now_ns();
    int n = snprintf(line, sizeof(line), "%c\t%lld\t%lld\t", kind, when, when);
    char *cursor = put_escaped(line + n, end, path);
    if (extra != NULL) {
        *cursor++ = '\t';
        cursor = put_escaped(cursor, end, extra);
    }
    *cursor++ = '\n';
    if (fd >= 0) {
        int saved = errno;
        ssize_t ignored = write(fd, line, (size_t)(cursor - line));
        (void)ignored;
        errno = saved;
    }
}

static void emit(char kind, const char *path, const char *extra) {
    int saved = errno;
    emit_to(trace_descriptor(), kind, path, extra);
    errno = saved;
}

static void identity_of(int dirfd, const char *path, char *out, size_t size) {
    struct stat st;
    if (fstatat(dirfd, path, &st, 0) != 0) {
        snprintf(out, size, "-");
        return;
    }
    snprintf(out, size, "%llu:%llu:%lld:%lld:%lld", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino, (long long)st.st_size,
             (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec,
             (long long)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec);
}

static int writing_flags(int flags) {
    return (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND)) != 0;
}

/* Before a write-open: where the path is and what it was (empty when not recorded). */
struct pending {
    char path[PATH_MAX];
    char identity[128];
    int record;
};

static void before_open(struct pending *p, int dirfd, const char *path, int flags) {
    p->record = 0;
    /* O_PATH reads no bytes; a folder is no file. */
    if (!enabled || busy || (flags & (O_DIRECTORY | O_PATH))) return;
    busy = 1;
    if (absolute(dirfd, path, p->path, sizeof(p->path)) && !is_ignored(p->path)) {
        p->record = 1;
        if (writing_flags(flags)) {
            int saved = errno;
            identity_of(dirfd, path, p->identity, sizeof(p->identity));
            errno = saved;
        }
    }
    busy = 0;
}

static void after_open(struct pending *p, int flags, int ok) {
    if (!p->record || !ok) return;
    busy = 1;
    if (writing_flags(flags)) {
        emit('i', p->path, p->identity);
        emit('w', p->path, NULL);
    } else {
        emit('r', p->path, NULL);
    }
    busy = 0;
}

static int mode_flags(const char *mode) {
    if (mode == NULL) return 0;
    if (strchr(mode, '+') != NULL) return O_RDWR;
    if (mode[0] == 'w' || mode[0] == 'a' || mode[0] == 'x') return O_WRONLY | O_CREAT;
    return O_RDONLY;
}

static int needs_mode(int flags) {
    return (flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE;
}

#define OPEN_LIKE(name, ...)                                                 \
    int name(__VA_ARGS__, int flags, ...) {                                  \
        REAL(name);                                                          \
        mode_t mode = 0;                                                     \
        if (needs_mode(flags)) {                                             \
            va_list args;                                                    \
            va_start(args, flags);                                           \
            mode = va_arg(args, mode_t);                                     \
            va_end(args);                                                    \
        }

OPEN_LIKE(open, const char *path)
    struct pending p;
    before_open(&p, AT_FDCWD, path, flags);
    int fd = real_open(path, flags, mode);
    int saved = errno;
    after_open(&p, flags, fd >= 0);
    errno = saved;
    return fd;
}

OPEN_LIKE(open64, const char *path)
    struct pending p;
    before_open(&p, AT_FDCWD, path, flags);
    int fd = real_open64(path, flags, mode);
    int saved = errno;
    after_open(&p, flags, fd >= 0);
    errno = saved;
    return fd;
}

OPEN_LIKE(openat, int dirfd, const char *path)
    struct pending p;
    before_open(&p, dirfd, path, flags);
    int fd = real_openat(dirfd, path, flags, mode);
    int saved = errno;
    after_open(&p, flags, fd >= 0);
    errno = saved;
    return fd;
}

OPEN_LIKE(openat64, int dirfd, const char *path)
    struct pending p;
    before_open(&p, dirfd, path, flags);
    int fd = real_openat64(dirfd, path, flags, mode);
    int saved = errno;
    after_open(&p, flags, fd >= 0);
    errno = saved;
    return fd;
}

/* The _FORTIFY_SOURCE entry points, which call the kernel without going through open(). */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

#define FORTIFIED(name, dirfd_expr, call)                 \
    {                                                     \
        REAL(name);                                       \
        struct pending p;                                 \
        before_open(&p, dirfd_expr, path, flags);         \
        int fd = call;                                    \
        int saved = errno;                                \
        after_open(&p, flags, fd >= 0);                   \
        errno = saved;                                    \
        return fd;                                        \
    }

int __open_2(const char *path, int flags) FORTIFIED(__open_2, AT_FDCWD, real___open_2(path, flags))
int __open64_2(const char *path, int flags)
    FORTIFIED(__open64_2, AT_FDCWD, real___open64_2(path, flags))
int __openat_2(int dirfd, const char *path, int flags)
    FORTIFIED(__openat_2, dirfd, real___openat_2(dirfd, path, flags))
int __openat64_2(int dirfd, const char *path, int flags)
    FORTIFIED(__openat64_2, dirfd, real___openat64_2(dirfd, path, flags))

int creat(const char *path, mode_t mode) {
    REAL(creat);
    int flags = O_CREAT | O_WRONLY | O_TRUNC;
    struct pending p;
    before_open(&p, AT_FDCWD, path, flags);
    int fd = real_creat(path, mode);
    int saved = errno;
    after_open(&p, flags, fd >= 0);
    errno = saved;
    return fd;
}

int creat64(const char *path, mode_t mode) {
    REAL(creat64);
    int flags = O_CREAT | O_WRONLY | O_TRUNC;
    struct pending p;
    before_open(&p, AT_FDCWD, path, flags);
    int fd = real_creat64(path, mode);
    int saved = errno;
    after_open(&p, flags, fd >= 0);
    errno = saved;
    return fd;
}

#define FOPEN_LIKE(name, ...)                                 \
    FILE *name(const char *path, const char *mode __VA_ARGS__) { \
        REAL(name);                                           \
        int flags = mode_flags(mode);                         \
        struct pending p;                                     \
        before_open(&p, AT_FDCWD, path, flags);

FOPEN_LIKE(fopen)
    FILE *stream = real_fopen(path, mode);
    int saved = errno;
    after_open(&p, flags, stream != NULL);
    errno = saved;
    return stream;
}

FOPEN_LIKE(fopen64)
    FILE *stream = real_fopen64(path, mode);
    int saved = errno;
    after_open(&p, flags, stream != NULL);
    errno = saved;
    return stream;
}

FOPEN_LIKE(freopen, , FILE *old)
    FILE *stream = real_freopen(path, mode, old);
    int saved = errno;
    after_open(&p, flags, stream != NULL && path != NULL);
    errno = saved;
    return stream;
}

FOPEN_LIKE(freopen64, , FILE *old)
    FILE *stream = real_freopen64(path, mode, old);
    int saved = errno;
    after_open(&p, flags, stream != NULL && path != NULL);
    errno = saved;
    return stream;
}

int truncate(const char *path, off_t length) {
    REAL(truncate);
    struct pending p;
    before_open(&p, AT_FDCWD, path, O_WRONLY);
    int result = real_truncate(path, length);
    int saved = errno;
    after_open(&p, O_WRONLY, result == 0);
    errno = saved;
    return result;
}

int truncate64(const char *path, off64_t length) {
    REAL(truncate64);
    struct pending p;
    before_open(&p, AT_FDCWD, path, O_WRONLY);
    int result = real_truncate64(path, length);
    int saved = errno;
    after_open(&p, O_WRONLY, result == 0);
    errno = saved;
    return result;
}

/* mkstemp and friends create a file through libc's internal open. */
static int made_temp(int fd) {
    if (fd < 0 || !enabled || busy) return fd;
    int saved = errno;
    busy = 1;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n > 0) {
        path[n] = '\0';
        if (path[0] == '/' && !is_ignored(path)) {
            emit('i', path, "-");
            emit('w', path, NULL);
        }
    }
    busy = 0;
    errno = saved;
    return fd;
}

int mkstemp(char *template) {
    REAL(mkstemp);
    return made_temp(real_mkstemp(template));
}

int mkostemp(char *template, int flags) {
    REAL(mkostemp);
    return made_temp(real_mkostemp(template, flags));
}

int mkstemps(char *template, int suffixlen) {
    REAL(mkstemps);
    return made_temp(real_mkstemps(template, suffixlen));
}

int mkostemps(char *template, int suffixlen, int flags) {
    REAL(mkostemps);
    return made_temp(real_mkostemps(template, suffixlen, flags));
}

static void moved(int old_dirfd, const char *old, int new_dirfd, const char *new, int ok) {
    if (!ok || !enabled || busy) return;
    int saved = errno;
    busy = 1;
    char source[PATH_MAX], target[PATH_MAX];
    if (absolute(old_dirfd, old, source, sizeof(source)) &&
        absolute(new_dirfd, new, target, sizeof(target)) &&
        !(is_ignored(source) && is_ignored(target)))
        emit('m', source, target);
    busy = 0;
    errno = saved;
}

int rename(const char *old, const char *new) {
    REAL(rename);
    int result = real_rename(old, new);
    moved(AT_FDCWD, old, AT_FDCWD, new, result == 0);
    return result;
}

int renameat(int old_dirfd, const char *old, int new_dirfd, const char *new) {
    REAL(renameat);
    int result = real_renameat(old_dirfd, old, new_dirfd, new);
    moved(old_dirfd, old, new_dirfd, new, result == 0);
    return result;
}

int renameat2(int old_dirfd, const char *old, int new_dirfd, const char *new, unsigned flags) {
    REAL(renameat2);
    int result = real_renameat2(old_dirfd, old, new_dirfd, new, flags);
    moved(old_dirfd, old, new_dirfd, new, result == 0);
    return result;
}

static void removed(int dirfd, const char *path, int ok) {
    if (!ok || !enabled || busy) return;
    int saved = errno;
    busy = 1;
    char where[PATH_MAX];
    if (absolute(dirfd, path, where, sizeof(where)) && !is_ignored(where)) emit('d', where, NULL);
    busy = 0;
    errno = saved;
}

int unlink(const char *path) {
    REAL(unlink);
    int result = real_unlink(path);
    removed(AT_FDCWD, path, result == 0);
    return result;
}

int unlinkat(int dirfd, const char *path, int flags) {
    REAL(unlinkat);
    int result = real_unlinkat(dirfd, path, flags);
    removed(dirfd, path, result == 0 && !(flags & AT_REMOVEDIR));
    return result;
}

int remove(const char *path) {
    REAL(remove);
    int result = real_remove(path);
    removed(AT_FDCWD, path, result == 0);
    return result;
}

/* --- exec: follow the run into the new program, or say it cannot be followed ----------- */

/* Whether the ELF file behind fd has a section of this name (Go's ".go.buildinfo"). */
static int has_section(int fd, const Elf64_Ehdr *header, const char *wanted) {
    if (header->e_shoff == 0 || header->e_shstrndx >= header->e_shnum ||
        header->e_shentsize != sizeof(Elf64_Shdr) || header->e_shnum > 4096)
        return 0;
    Elf64_Shdr names;
    off_t at = (off_t)header->e_shoff + (off_t)header->e_shstrndx * header->e_shentsize;
    if (pread(fd, &names, sizeof(names), at) != (ssize_t)sizeof(names)) return 0;
    size_t wanted_len = strlen(wanted) + 1;
    for (int i = 0; i < header->e_shnum; i++) {
        Elf64_Shdr section;
        at = (off_t)header->e_shoff + (off_t)i * header->e_shentsize;
        if (pread(fd, &section, sizeof(section), at) != (ssize_t)sizeof(section)) return 0;
        char name[32];
        if (section.sh_name >= names.sh_size || wanted_len > sizeof(name)) continue;
        ssize_t n = pread(fd, name, wanted_len, (off_t)(names.sh_offset + section.sh_name));
        if (n == (ssize_t)wanted_len && memcmp(name, wanted, wanted_len) == 0) return 1;
    }
    return 0;
}

/* Why this library would not see the program at path ("" when it would). */
static const char *escape_reason(const char *path, int depth) {
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return "";
    const char *why = "";
    struct stat st;
    unsigned char head[256];
    ssize_t n = 0;
    if (fstat(fd, &st) == 0 && (st.st_mode & (S_ISUID | S_ISGID)) &&
        (st.st_uid != getuid() || st.st_gid != getgid()))
        why = "setuid";
    else
        n = pread(fd, head, sizeof(head) - 1, 0);
    if (n > 2 && head[0] == '#' && head[1] == '!') {
        head[n] = '\0';
        char *start = (char *)head + 2;
        while (*start == ' ' || *start == '\t') start++;
        char *stop = start;
        while (*stop && *stop != ' ' && *stop != '\t' && *stop != '\n') stop++;
        *stop = '\0';
        if (depth < 3 && start[0] == '/') {
            close(fd);
            return escape_reason(start, depth + 1);
        }
    } else if (n >= (ssize_t)sizeof(Elf64_Ehdr) && memcmp(head, ELFMAG, SELFMAG) == 0) {
        if (head[EI_CLASS] != ELFCLASS64) {
            why = "32-bit";
        } else {
            Elf64_Ehdr header;
            memcpy(&header, head, sizeof(header));
            int interpreted = 0;
            for (int i = 0; i < header.e_phnum && i < 128; i++) {
                Elf64_Phdr ph;
                off_t at = (off_t)header.e_phoff + (off_t)i * header.e_phentsize;
                if (pread(fd, &ph, sizeof(ph), at) != (ssize_t)sizeof(ph)) break;
                if (ph.p_type == PT_INTERP) {
                    interpreted = 1;
                    break;
                }
            }
            if (!interpreted)
                why = "static";
            else if (has_section(fd, &header, ".go.buildinfo"))
                why = "go"; /* dynamically linked, but its file calls bypass libc */
        }
    }
    close(fd);
    return why;
}

/* The program execvp would run for file: itself when it names a path, else a PATH search. */
static const char *search_path(const char *file, char *out, size_t size) {
    if (file == NULL || strchr(file, '/') != NULL) return file;
    const char *search = getenv("PATH");
    if (search == NULL) search = "/bin:/usr/bin";
    while (*search) {
        const char *colon = strchr(search, ':');
        size_t len = colon ? (size_t)(colon - search) : strlen(search);
        if (len + 2 + strlen(file) < size) {
            if (len == 0) {
                snprintf(out, size, "%s", file);
            } else {
                snprintf(out, size, "%.*s/%s", (int)len, search, file);
            }
            if (access(out, X_OK) == 0) return out;
        }
        if (!colon) break;
        search = colon + 1;
    }
    return NULL;
}

static char *const *carry_environment(char *const envp[], char **buffer, size_t slots) {
    if (!enabled || envp == NULL) return envp;
    size_t count = 0;
    int present[CARRIED] = {0};
    for (; envp[count] != NULL; count++)
        for (size_t k = 0; k < CARRIED; k++) {
            size_t len = strlen(carried[k]);
            if (strncmp(envp[count], carried[k], len) == 0 && envp[count][len] == '=')
                present[k] = 1;
        }
    int missing = 0;
    for (size_t k = 0; k < CARRIED; k++) missing += !present[k] && carried_entry[k][0] != '\0';
    if (!missing || count + CARRIED + 1 > slots) return envp;
    size_t out = 0;
    for (size_t i = 0; i < count; i++) buffer[out++] = envp[i];
    /* Static copies made at start: no allocation between fork and exec. */
    for (size_t k = 0; k < CARRIED; k++)
        if (!present[k] && carried_entry[k][0] != '\0') buffer[out++] = carried_entry[k];
    buffer[out] = NULL;
    return buffer;
}

/* A program this library cannot see, run under strace instead when the wrapper allows it:
 * once it knows strace can trace here, it writes strace's options, one a line, to
 * <trace_dir>/strace.argv. */
#define TAKEOVER_SLOTS 4096
struct takeover {
    char *argv[TAKEOVER_SLOTS];
    char options[8192];
    char output[PATH_MAX];
};

static int strace_options(struct takeover *t) {
    char name[PATH_MAX];
    snprintf(name, sizeof(name), "%s/strace.argv", trace_dir);
    int fd = (int)syscall(SYS_openat, AT_FDCWD, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, t->options, sizeof(t->options) - 1);
    close(fd);
    if (n <= 0) return 0;
    t->options[n] = '\0';
    int count = 0;
    char *line = t->options;
    while (*line != '\0' && count < 64) {
        char *newline = strchr(line, '\n');
        if (newline == NULL) break;
        *newline = '\0';
        t->argv[count++] = line;
        line = newline + 1;
    }
    return count;
}

/* Check the program an exec is about to run. Returns 1 with t->argv set when it is to run
 * under strace; otherwise 0, after recording it as escaped if this library cannot see it.
 * Records go to a file of their own: between vfork and exec, the globals are the parent's. */
static int take_over(const char *program, char *const argv[], struct takeover *t) {
    if (!enabled || busy || program == NULL) return 0;
    int saved = errno;
    busy = 1;
    int taken = 0;
    char where[PATH_MAX];
    if (absolute(AT_FDCWD, program, where, sizeof(where))) {
        const char *why = escape_reason(where, 0);
        if (why[0] != '\0') {
            int fd = open_trace_file();
            /* strace cannot follow a setuid program into its privileges; and it passes the
             * program's path as argv[0]: a program called by another name (busybox) would
             * change behaviour, so it runs untraced instead. */
            const char *name = argv != NULL && argv[0] != NULL ? argv[0] : where;
            const char *own = strrchr(where, '/');
            const char *called = strrchr(name, '/');
            int renamed = strcmp(own ? own + 1 : where, called ? called + 1 : name) != 0;
            int count = strcmp(why, "setuid") == 0 || renamed ? 0 : strace_options(t);
            size_t given = 0;
            while (argv != NULL && argv[given] != NULL) given++;
            char cwd[PATH_MAX];
            if (count > 0 && fd >= 0 && count + 4 + given < TAKEOVER_SLOTS &&
                getcwd(cwd, sizeof(cwd)) != NULL) {
                snprintf(t->output, sizeof(t->output), "%s/%d-%llx.strace", trace_dir,
                         (int)getpid(), (unsigned long long)now_ns());
                t->argv[count++] = "-o";
                t->argv[count++] = t->output;
                t->argv[count++] = "--";
                t->argv[count++] = where;
                for (size_t i = 1; i < given; i++) t->argv[count++] = argv[i];
                t->argv[count] = NULL;
                emit_to(fd, 'T', t->output, cwd);
                taken = 1;
            } else {
                emit_to(fd, 'S', where, why);
            }
            if (fd >= 0) close(fd);
        }
    }
    busy = 0;
    errno = saved;
    return taken;
}

/* strace could not be started after all: the program runs untraced, and the run says so. */
static void take_over_failed(const char *program) {
    int saved = errno;
    int fd = open_trace_file();
    emit_to(fd, 'S', program, "static");
    if (fd >= 0) close(fd);
    errno = saved;
}

#define ENV_SLOTS 4096

int execve(const char *path, char *const argv[], char *const envp[]) {
    REAL(execve);
    char *buffer[ENV_SLOTS];
    char *const *env = carry_environment(envp, buffer, ENV_SLOTS);
    struct takeover t;
    if (take_over(path, argv, &t)) {
        real_execve(t.argv[0], t.argv, env);
        take_over_failed(path);
    }
    return real_execve(path, argv, env);
}

int execv(const char *path, char *const argv[]) {
    return execve(path, argv, environ);
}

int execvpe(const char *file, char *const argv[], char *const envp[]) {
    REAL(execvpe);
    REAL(execve);
    char found[PATH_MAX];
    const char *program = search_path(file, found, sizeof(found));
    char *buffer[ENV_SLOTS];
    char *const *env = carry_environment(envp, buffer, ENV_SLOTS);
    struct takeover t;
    if (take_over(program, argv, &t)) {
        real_execve(t.argv[0], t.argv, env);
        take_over_failed(program);
    }
    return real_execvpe(file, argv, env);
}

int execvp(const char *file, char *const argv[]) {
    return execvpe(file, argv, environ);
}

int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *actions,
                const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    REAL(posix_spawn);
    char *buffer[ENV_SLOTS];
    char *const *env = carry_environment(envp, buffer, ENV_SLOTS);
    struct takeover t;
    if (take_over(path, argv, &t)) {
        int result = real_posix_spawn(pid, t.argv[0], actions, attr, t.argv, env);
        if (result == 0) return 0;
        take_over_failed(path);
    }
    return real_posix_spawn(pid, path, actions, attr, argv, env);
}

int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *actions,
                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    REAL(posix_spawnp);
    REAL(posix_spawn);
    char found[PATH_MAX];
    const char *program = search_path(file, found, sizeof(found));
    char *buffer[ENV_SLOTS];
    char *const *env = carry_environment(envp, buffer, ENV_SLOTS);
    struct takeover t;
    if (take_over(program, argv, &t)) {
        int result = real_posix_spawn(pid, t.argv[0], actions, attr, t.argv, env);
        if (result == 0) return 0;
        take_over_failed(program);
    }
    return real_posix_spawnp(pid, file, actions, attr, argv, env);
}
