/*
 * segment.c -- create, attach, close and unlink segments; the per-process
 * file registry and liveness beacons; header validation; error details.
 *
 * Protocols are described in layout.h (creation) and engine.h (beacons).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "dict/dict.h" /* stx_dict_format */

#define SHM_DIR "/dev/shm/"
#define INIT_LOCK_BYTE 0
#define DEFAULT_NSLOTS 128u
#define MAX_NSLOTS 65536u
/* How long an attacher gives a creator that has opened the name but not
 * yet taken the init lock (a window of a few instructions). */
/* Heap bytes a new dict reserves at once; alloc.c reserves the rest as
 * the heap grows. */
#define DICT_INITIAL_HEAP (1ull << 20)
#define CREATOR_GRACE_NS 200000000ull

volatile uint64_t stx_fork_gen = 1;
volatile int32_t stx_self_pid;

static _Thread_local char detail_buf[512];
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static stx_file *registry;
static char crash_point[64];

/* ------------------------------------------------------------------ */
/* errors and small helpers                                            */

const char *
stx_detail(void)
{
    return detail_buf;
}

int
stx_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail_buf, sizeof(detail_buf), fmt, ap);
    va_end(ap);
    return code;
}

/* Map an errno from the OS to an engine code, recording what failed. */
static int
fail_errno(int err, const char *what, const char *name)
{
    int code = STX_ESYS;
    switch (err) {
    case EEXIST: code = STX_EEXIST; break;
    case ENOENT: code = STX_ENOENT; break;
    case EACCES:
    case EPERM: code = STX_EACCES; break;
    case ENOSPC: code = STX_EFULL; break;
    case ENOMEM: code = STX_ENOMEM; break;
    case EINVAL:
    case ENAMETOOLONG: code = STX_EINVAL; break;
    }
    return stx_fail(code, "%s of '%s' failed: %s", what, name,
                    strerror(err));
}

/* Nanoseconds on `clock`. */
static uint64_t
now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* `value` rounded up to a multiple of `to`. */
static uint64_t
round_up(uint64_t value, uint64_t to)
{
    return (value + to - 1) / to * to;
}

uint32_t
stx_abi_word(void)
{
    uint32_t little = 1;
    return (uint32_t)sizeof(pthread_mutex_t)
           | (uint32_t)_Alignof(pthread_mutex_t) << 8
           | (uint32_t)(STX_CACHE_LINE / 8) << 16
           | (uint32_t)sizeof(void *) << 24
           | (uint32_t)(*(uint8_t *)&little) << 31;
}

/* FNV-1a over the immutable header fields. */
static uint64_t
header_checksum(const stx_header *hdr)
{
    const uint8_t *p = (const uint8_t *)hdr + sizeof(hdr->magic);
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = sizeof(hdr->magic); i < STX_CHECKSUMMED_BYTES; i++) {
        h = (h ^ *p++) * 0x100000001b3ull;
    }
    return h;
}

int
stx_check_name(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > STX_NAME_MAX) {
        return stx_fail(STX_EINVAL, "a segment name has 1 to %d characters"
                        " (got %zu)", STX_NAME_MAX, len);
    }
    if (strchr(name, '/') != NULL || strcmp(name, ".") == 0
        || strcmp(name, "..") == 0) {
        return stx_fail(STX_EINVAL, "segment name '%s' may not contain '/'"
                        " or be '.' or '..'", name);
    }
    return 0;
}

uint64_t
stx_default_undo_size(uint64_t data_size)
{
    uint64_t size = data_size * 4;
    if (size > (64ull << 20)) {
        size = 64ull << 20;
    }
    if (size < (16ull << 10)) {
        size = 16ull << 10;
    }
    return round_up(size, STX_PAGE);
}

/* A dict's default undo log: an eighth of its size, from 256 KiB to
 * 64 MiB (a dict txn logs about 32 bytes per key it inserts and 80 per
 * key it deletes; fresh records are not logged). */
static uint64_t
dict_default_undo_size(uint64_t data_size)
{
    uint64_t size = data_size / 8;
    size = size < (256ull << 10) ? (256ull << 10) : size;
    size = size > (64ull << 20) ? (64ull << 20) : size;
    return round_up(size, STX_PAGE);
}

void
stx_set_crash_point(const char *point)
{
    snprintf(crash_point, sizeof(crash_point), "%s", point ? point : "");
}

void
stx_crash_point(const char *point)
{
    if (crash_point[0] != '\0' && strcmp(crash_point, point) == 0) {
        raise(SIGKILL);
    }
}

/* ------------------------------------------------------------------ */
/* beacons and the file registry                                       */

/* fcntl lock command `cmd` of `type` on the one byte at `byte`. */
static int
lock_byte(int fd, short type, off_t byte, int cmd)
{
    struct flock fl = {0};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    return fcntl(fd, cmd, &fl);
}

/* Hold our liveness beacon: a write lock on byte `pid` of `fd`. */
static int
take_beacon(int fd)
{
    return lock_byte(fd, F_WRLCK, (off_t)stx_self_pid, F_SETLK);
}

int
stx_pid_alive(const stx_file *file, int32_t pid)
{
    if (pid <= 0) {
        return 0;
    }
    if (pid == stx_self_pid) {
        return 1;
    }
    struct flock fl = {0};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = pid;
    fl.l_len = 1;
    if (fcntl(file->fd, F_GETLK, &fl) != 0) {
        return 1; /* cannot tell: assume alive, never clear a live slot */
    }
    return fl.l_type != F_UNLCK;
}

/* Claim a reader slot for this process in the file's mapping (any kind:
 * the slot table is mapped read-write in both), so a forked child that
 * only reads lock-free is still listed as attached. */
static void
claim_slot_after_fork(stx_file *f)
{
    uint8_t *base = f->maps[0] != NULL ? f->maps[0] : f->maps[1];
    if (base == NULL || f->nslots == 0) {
        return; /* a handle with a private mapping claims on first use */
    }
    int32_t slot = stx_slot_claim((stx_header *)base,
                                  (stx_reader_slot *)(base + f->slots_off),
                                  f->nslots, stx_self_pid);
    if (slot >= 0) {
        f->slot = slot;
        f->fork_gen = stx_fork_gen;
    }
}

/* In a forked child: our beacons are not inherited, take them anew, claim
 * reader slots of our own, and forget the parent's txns. */
static void
after_fork_in_child(void)
{
    stx_fork_gen++;
    stx_self_pid = getpid();
    stx_txns_after_fork();
    for (stx_file *f = registry; f != NULL; f = f->next) {
        take_beacon(f->fd);
        f->slot = -1;
        atomic_store(&f->ntxn, 0);
        claim_slot_after_fork(f);
    }
    pthread_mutex_init(&registry_lock, NULL);
}

static void learn_mutex_kind(void);

int
stx_engine_init(void)
{
    static int done;
    stx_self_pid = getpid();
    if (!done) {
        if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
            return stx_fail(STX_ESYS, "pthread_atfork failed");
        }
        learn_mutex_kind();
        done = 1;
    }
    return 0;
}

/* This process's stx_file for the file (dev, ino), or NULL. */
static stx_file *
registry_find(dev_t dev, ino_t ino)
{
    for (stx_file *f = registry; f != NULL; f = f->next) {
        if (f->dev == dev && f->ino == ino) {
            return f;
        }
    }
    return NULL;
}

/* Register a freshly opened fd: take its beacon, or, if this process
 * already has the file open, reuse that fd and close this one. */
static int
registry_adopt(int fd, const char *name, stx_file **out)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return fail_errno(err, "fstat", name);
    }
    stx_file *f = registry_find(st.st_dev, st.st_ino);
    if (f != NULL) {
        close(fd);             /* drops our classic locks on the file... */
        take_beacon(f->fd);    /* ...so take the beacon again at once */
        f->refs++;
        *out = f;
        return 0;
    }
    f = calloc(1, sizeof(*f));
    if (f == NULL) {
        close(fd);
        return stx_fail(STX_ENOMEM, "out of memory attaching '%s'", name);
    }
    if (take_beacon(fd) != 0) {
        int err = errno;
        free(f);
        close(fd);
        return fail_errno(err, "taking the liveness lock", name);
    }
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    f->fd = fd;
    f->refs = 1;
    f->slot = -1;
    f->next = registry;
    registry = f;
    *out = f;
    return 0;
}

/* Open `name`, reusing this process's fd when it has one: opening and
 * closing a second fd would drop the beacon. */
static int
open_shared_fd(const char *name, stx_file **out)
{
    char path[sizeof(SHM_DIR) + STX_NAME_MAX + 1];
    snprintf(path, sizeof(path), SHM_DIR "%s", name);
    struct stat st;
    pthread_mutex_lock(&registry_lock);
    if (stat(path, &st) == 0) {
        stx_file *f = registry_find(st.st_dev, st.st_ino);
        if (f != NULL) {
            f->refs++;
            *out = f;
            pthread_mutex_unlock(&registry_lock);
            return 0;
        }
    }
    char shm_name[STX_NAME_MAX + 2];
    snprintf(shm_name, sizeof(shm_name), "/%s", name);
    int fd = shm_open(shm_name, O_RDWR | O_CLOEXEC, 0);
    int rc;
    if (fd < 0) {
        rc = fail_errno(errno, "attach", name);
        if (rc == STX_ENOENT) {
            rc = stx_fail(STX_ENOENT, "no segment named '%s'", name);
        }
    }
    else {
        rc = registry_adopt(fd, name, out);
    }
    pthread_mutex_unlock(&registry_lock);
    return rc;
}

/* Drop one handle's reference; the last closes the fd (and with it the
 * beacon). */
static void
release_file(stx_file *file)
{
    pthread_mutex_lock(&registry_lock);
    if (--file->refs == 0) {
        for (stx_file **p = &registry; *p != NULL; p = &(*p)->next) {
            if (*p == file) {
                *p = file->next;
                break;
            }
        }
        close(file->fd);
        free(file);
    }
    pthread_mutex_unlock(&registry_lock);
}

/* ------------------------------------------------------------------ */
/* mapping                                                             */

/* Point the handle's fields into a mapping of a validated header. */
static void
fill_handle(stx_segment *seg, uint8_t *base, size_t map_size)
{
    stx_header *hdr = (stx_header *)base;
    seg->base = base;
    seg->map_size = map_size;
    seg->hdr = hdr;
    seg->slots = (stx_reader_slot *)(base + hdr->slots_off);
    seg->nslots = hdr->nslots;
    seg->undo = base + hdr->undo_off;
    seg->undo_size = hdr->undo_size;
    seg->data = base + hdr->data_off;
    seg->data_size = hdr->data_size;
    seg->file->slots_off = hdr->slots_off;
    seg->file->nslots = hdr->nslots;
}

/* Map the first `size` bytes of the segment read-write. */
static int
map_file(stx_segment *seg, size_t size, uint8_t **out)
{
    int flags = MAP_SHARED | (seg->populate ? MAP_POPULATE : 0);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, seg->file->fd,
                   0);
    if (p == MAP_FAILED) {
        return fail_errno(errno, "mmap", seg->name);
    }
    *out = p;
    return 0;
}

/* Make the handle's fresh mapping the one its process's handles of the
 * same kind share (if there is none yet). */
static void
share_mapping(stx_segment *seg)
{
    stx_file *f = seg->file;
    int kind = seg->read_only;
    pthread_mutex_lock(&registry_lock);
    if (f->maps[kind] == NULL) {
        f->maps[kind] = seg->base;
        f->map_sizes[kind] = seg->map_size;
        f->map_refs[kind] = 1;
        seg->shared_map = 1;
    }
    pthread_mutex_unlock(&registry_lock);
}

/* The shared mapping of this kind and `size`, with a reference taken, or
 * NULL. */
static uint8_t *
reuse_mapping(stx_segment *seg, uint64_t size)
{
    stx_file *f = seg->file;
    int kind = seg->read_only;
    uint8_t *base = NULL;
    pthread_mutex_lock(&registry_lock);
    if (f->maps[kind] != NULL && f->map_sizes[kind] == size) {
        base = f->maps[kind];
        f->map_refs[kind]++;
        seg->shared_map = 1;
    }
    pthread_mutex_unlock(&registry_lock);
    return base;
}

/* Drop this handle's mapping: unmap it unless other handles share it. */
static void
unmap_handle(stx_segment *seg)
{
    stx_file *f = seg->file;
    int kind = seg->read_only;
    int last = 1;
    if (seg->shared_map) {
        pthread_mutex_lock(&registry_lock);
        last = --f->map_refs[kind] == 0;
        if (last) {
            f->maps[kind] = NULL;
        }
        pthread_mutex_unlock(&registry_lock);
    }
    if (last && seg->base != NULL) {
        munmap(seg->base, seg->map_size);
    }
    seg->base = NULL;
    seg->shared_map = 0;
}

/* Read-only handles see the data region as PROT_READ. */
static int
protect_data(stx_segment *seg)
{
    if (!seg->read_only || seg->data_size == 0) {
        return 0;
    }
    size_t len = (size_t)round_up(seg->data_size, STX_PAGE);
    if (mprotect(seg->data, len, PROT_READ) != 0) {
        return fail_errno(errno, "mprotect", seg->name);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* creation                                                            */

/* Lay out the regions for `opts` into `hdr` (not yet mapped memory). */
static int
plan_layout(stx_header *hdr, const stx_create_opts *opts)
{
    uint32_t nslots = opts->nslots ? opts->nslots : DEFAULT_NSLOTS;
    if (nslots > MAX_NSLOTS) {
        return stx_fail(STX_EINVAL, "max_processes is at most %u",
                        MAX_NSLOTS);
    }
    uint64_t undo = opts->undo_size ? round_up(opts->undo_size, 8)
                                    : stx_default_undo_size(opts->data_size);
    if (!opts->undo_size && opts->layout_kind == STX_LAYOUT_DICT) {
        undo = dict_default_undo_size(opts->data_size);
    }
    if (opts->data_size > (1ull << 46) || undo > (1ull << 40)) {
        return stx_fail(STX_EFULL, "asked for %llu data bytes and %llu undo"
                        " bytes: more than any machine has",
                        (unsigned long long)opts->data_size,
                        (unsigned long long)undo);
    }
    hdr->header_size = (uint32_t)round_up(sizeof(stx_header), STX_PAGE);
    hdr->slots_off = hdr->header_size;
    hdr->nslots = nslots;
    hdr->slot_size = sizeof(stx_reader_slot);
    hdr->undo_off = hdr->slots_off + (uint64_t)nslots * sizeof(stx_reader_slot);
    hdr->undo_size = undo;
    hdr->data_off = round_up(hdr->undo_off + undo, STX_PAGE);
    hdr->data_size = opts->data_size;
    hdr->layout_kind = opts->layout_kind;
    hdr->total_size = round_up(hdr->data_off + opts->data_size, STX_PAGE);
    return 0;
}

/* Refuse up front what /dev/shm cannot hold, so a full tmpfs is a clear
 * error now and never a SIGBUS later. */
static int
check_free_space(int fd, uint64_t total, const char *name)
{
    struct statvfs vfs;
    if (fstatvfs(fd, &vfs) != 0) {
        return 0; /* let posix_fallocate decide */
    }
    uint64_t free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    if (total > free_bytes) {
        return stx_fail(STX_EFULL, "segment '%s' needs %llu bytes but "
                        "/dev/shm has %llu free", name,
                        (unsigned long long)total,
                        (unsigned long long)free_bytes);
    }
    return 0;
}

/* Size the file to `total` bytes and back its first `reserve` bytes with
 * real pages now (posix_fallocate): nothing below `reserve` can SIGBUS
 * later.  Slots segments reserve everything; a dict reserves its heap as
 * it grows (alloc.c). */
static int
reserve_space(int fd, uint64_t total, uint64_t reserve, const char *name)
{
    int rc = check_free_space(fd, reserve, name);
    if (rc != 0) {
        return rc;
    }
    if (reserve < total && ftruncate(fd, (off_t)total) != 0) {
        return fail_errno(errno, "sizing", name);
    }
    int err = posix_fallocate(fd, 0, (off_t)reserve);
    if (err == ENOSPC || err == EFBIG) {
        return stx_fail(STX_EFULL, "segment '%s' needs %llu bytes but "
                        "/dev/shm ran out of space", name,
                        (unsigned long long)reserve);
    }
    if (err != 0) {
        return fail_errno(err, "reserving space", name);
    }
    return 0;
}

/* The bytes of a new segment to reserve at once: all of a slots segment;
 * of a dict, the header, slots, undo log and the first heap pages. */
static uint64_t
initial_reserve(const stx_header *plan)
{
    if (plan->layout_kind != STX_LAYOUT_DICT
        || plan->data_size <= DICT_INITIAL_HEAP) {
        return plan->total_size;
    }
    return plan->data_off + DICT_INITIAL_HEAP;
}

/* Initialise the robust, process-shared writer mutex. */
static int
init_writer_mutex(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc == 0) {
        rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    }
    if (rc == 0) {
        rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    }
    if (rc == 0) {
        rc = pthread_mutex_init(m, &attr);
    }
    pthread_mutexattr_destroy(&attr);
    return rc;
}

/* This process's pid namespace: the inode of /proc/self/ns/pid (0 if
 * /proc is not there to tell). */
static uint64_t
own_pid_ns(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* Liveness (beacons keyed by pid, kill() on thread ids) only means
 * something among processes that see the same pids: refuse to attach
 * from another pid namespace (a container that shares /dev/shm but not
 * its pid namespace) rather than misjudge who is alive. */
static int
check_pid_ns(const stx_segment *seg)
{
    uint64_t theirs = seg->hdr->pid_ns, ours = own_pid_ns();
    if (theirs == 0 || ours == 0 || theirs == ours) {
        return 0;
    }
    return stx_fail(STX_EINCOMPAT, "segment '%s' was created in another pid "
                    "namespace; every process sharing a segment must see "
                    "the same pids (with containers, share the pid "
                    "namespace too, e.g. docker --pid=host or --pid "
                    "container:NAME)", seg->name);
}

/* Write the creator-only header fields: format, shape, key, pid, time. */
static void
fill_identity(stx_header *hdr, const stx_create_opts *opts)
{
    hdr->version = STX_FORMAT_VERSION;
    hdr->abi = stx_abi_word();
    hdr->layout_kind = opts->layout_kind;
    snprintf(hdr->format, sizeof(hdr->format), "%s",
             opts->format ? opts->format : "");
    hdr->itemsize = opts->itemsize;
    hdr->ndim = opts->ndim;
    for (uint32_t i = 0; i < opts->ndim && i < STX_MAX_NDIM; i++) {
        hdr->shape[i] = opts->shape[i];
    }
    if (getrandom(hdr->hash_key, sizeof(hdr->hash_key), 0)
        != (ssize_t)sizeof(hdr->hash_key)) {
        uint64_t t = now_ns(CLOCK_MONOTONIC) ^ ((uint64_t)stx_self_pid << 32);
        hdr->hash_key[0] = t * 0x9e3779b97f4a7c15ull;
        hdr->hash_key[1] = (t ^ (uintptr_t)hdr) * 0xc2b2ae3d27d4eb4full;
    }
    hdr->creator_pid = stx_self_pid;
    hdr->pid_ns = own_pid_ns();
    hdr->created_ns = now_ns(CLOCK_REALTIME);
    atomic_store(&hdr->modified_ns, hdr->created_ns);
}

/* Fill a fresh, zeroed header and publish it by storing the magic. */
static int
init_header(stx_segment *seg, const stx_create_opts *opts, uint64_t reserve)
{
    stx_header *hdr = seg->hdr;
    fill_identity(hdr, opts);
    if (opts->layout_kind == STX_LAYOUT_DICT) {
        int rc = stx_dict_format(seg, reserve - hdr->data_off);
        if (rc != 0) {
            return rc;
        }
    }
    if (init_writer_mutex(&hdr->writer_mutex) != 0) {
        return stx_fail(STX_ESYS, "cannot make a robust process-shared "
                        "mutex on this system");
    }
    hdr->checksum = header_checksum(hdr);
    if (opts->initial != NULL) {
        memcpy(seg->data, opts->initial, opts->data_size); /* unseen yet */
    }
    stx_crash_point("create:before_magic");
    atomic_store_explicit(&hdr->magic, STX_MAGIC, memory_order_release);
    return 0;
}

/* The steps of creation after the name exists and we hold the init lock. */
static int
build_segment(stx_segment *seg, const stx_create_opts *opts)
{
    stx_header plan = {0};
    int rc = plan_layout(&plan, opts);
    if (rc == 0) {
        rc = reserve_space(seg->file->fd, plan.total_size,
                           initial_reserve(&plan), seg->name);
    }
    stx_crash_point("create:after_reserve");
    uint8_t *base = NULL;
    if (rc == 0) {
        rc = map_file(seg, plan.total_size, &base);
    }
    if (rc == 0) {
        /* the geometry fields lie between the magic and the format */
        memcpy(base + sizeof(plan.magic), (uint8_t *)&plan + sizeof(plan.magic),
               offsetof(stx_header, format) - sizeof(plan.magic));
        fill_handle(seg, base, plan.total_size);
        share_mapping(seg);
        rc = init_header(seg, opts, initial_reserve(&plan));
        if (rc != 0) {
            unmap_handle(seg);
        }
    }
    return rc;
}

int
stx_create(stx_segment *seg, const char *name, const stx_create_opts *opts)
{
    memset(seg, 0, sizeof(*seg));
    int rc = stx_check_name(name);
    if (rc != 0) {
        return rc;
    }
    snprintf(seg->name, sizeof(seg->name), "%s", name);
    seg->populate = opts->populate;
    char shm_name[STX_NAME_MAX + 2];
    snprintf(shm_name, sizeof(shm_name), "/%s", name);
    pthread_mutex_lock(&registry_lock);
    int fd = shm_open(shm_name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC,
                      opts->mode ? opts->mode : 0600);
    if (fd < 0) {
        pthread_mutex_unlock(&registry_lock);
        rc = fail_errno(errno, "create", name);
        if (rc == STX_EEXIST) {
            rc = stx_fail(STX_EEXIST, "a segment named '%s' already exists",
                          name);
        }
        return rc;
    }
    /* the mode given is the mode the file gets: the umask does not
     * narrow it (fchmod on our own fd, never on the name) */
    if (fchmod(fd, opts->mode ? opts->mode : 0600) != 0
        || lock_byte(fd, F_WRLCK, INIT_LOCK_BYTE, F_SETLK) != 0) {
        rc = fail_errno(errno, "setting the mode or init lock of", name);
        close(fd);
        shm_unlink(shm_name);
        pthread_mutex_unlock(&registry_lock);
        return rc;
    }
    /* Mark the file as a shmtxn segment under construction at once, so a
     * creator killed from here on leaves an "abandoned" segment that
     * `shmtxn gc` may remove, not an anonymous file. */
    uint64_t building = STX_MAGIC_BUILDING;
    if (pwrite(fd, &building, sizeof(building), 0) != sizeof(building)) {
        rc = fail_errno(errno, "create", name);
        close(fd);
        shm_unlink(shm_name);
        pthread_mutex_unlock(&registry_lock);
        return rc;
    }
    stx_crash_point("create:after_open");
    rc = registry_adopt(fd, name, &seg->file);
    pthread_mutex_unlock(&registry_lock);
    if (rc == 0) {
        seg->file->creating = 1;
        rc = build_segment(seg, opts);
        seg->file->creating = 0;
        if (rc != 0) {
            shm_unlink(shm_name);
            release_file(seg->file);
            seg->file = NULL;
            return rc;
        }
        lock_byte(seg->file->fd, F_UNLCK, INIT_LOCK_BYTE, F_SETLK);
        rc = stx_slot_ensure(seg);
        if (rc != 0) {
            stx_close(seg);
            shm_unlink(shm_name);
        }
    }
    else {
        shm_unlink(shm_name);
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* attaching                                                           */

/* STX_ECORRUPT unless [off, off+len) lies inside `total` bytes. */
static int
check_region(const char *what, uint64_t off, uint64_t len, uint64_t total,
             const char *name)
{
    if (off > total || len > total - off) {
        return stx_fail(STX_ECORRUPT, "segment '%s' is corrupt: its %s "
                        "region [%llu, +%llu) lies outside its %llu bytes",
                        name, what, (unsigned long long)off,
                        (unsigned long long)len, (unsigned long long)total);
    }
    return 0;
}

/* 1 if shape[0] * ... * shape[ndim-1] * itemsize == data_size, computed
 * without overflow (ndim 0: no shape, as for a dict). */
static int
shape_matches(const stx_header *hdr)
{
    if (hdr->ndim == 0) {
        return 1;
    }
    uint64_t bytes = hdr->itemsize;
    for (uint32_t i = 0; i < hdr->ndim; i++) {
        if (hdr->shape[i] != 0 && bytes > UINT64_MAX / hdr->shape[i]) {
            return 0;
        }
        bytes *= hdr->shape[i];
    }
    return bytes == hdr->data_size;
}

/* Check that header, slot table, undo log and data lie inside the file,
 * in that order, and do not overlap. */
static int
check_regions(const stx_header *hdr, uint64_t file_size, const char *name)
{
    uint64_t slots_len = (uint64_t)hdr->nslots * hdr->slot_size;
    int rc = check_region("header", 0, hdr->header_size, file_size, name);
    if (rc == 0) {
        rc = check_region("slot", hdr->slots_off, slots_len, file_size,
                          name);
    }
    if (rc == 0) {
        rc = check_region("undo", hdr->undo_off, hdr->undo_size, file_size,
                          name);
    }
    if (rc == 0) {
        rc = check_region("data", hdr->data_off, hdr->data_size, file_size,
                          name);
    }
    /* each region lies inside the file, so these sums cannot overflow */
    if (rc == 0
        && (hdr->slots_off < hdr->header_size
            || hdr->undo_off < hdr->slots_off + slots_len
            || hdr->data_off < hdr->undo_off + hdr->undo_size)) {
        rc = stx_fail(STX_ECORRUPT, "segment '%s' is corrupt: its header, "
                      "slot, undo and data regions overlap", name);
    }
    return rc;
}

/* The kind word of a healthy writer mutex, set by stx_engine_init. */
static int mutex_kind = -1;

/* Learn the kind word this libc gives our robust, shared mutex. */
static void
learn_mutex_kind(void)
{
#ifdef __GLIBC__
    pthread_mutex_t probe;
    if (init_writer_mutex(&probe) == 0) {
        mutex_kind = probe.__data.__kind;
        pthread_mutex_destroy(&probe);
    }
#endif
}

int
stx_mutex_kind(void)
{
    return mutex_kind;
}

int
stx_mutex_plausible(const pthread_mutex_t *m)
{
#ifdef __GLIBC__
    int kind = __atomic_load_n(&m->__data.__kind, __ATOMIC_RELAXED);
    return mutex_kind < 0 || kind == mutex_kind;
#else
    (void)m;
    return 1;
#endif
}

/* 1 if the format field is a short printable ASCII string (a struct code
 * or a dtype name), NUL terminated. */
static int
format_plausible(const stx_header *hdr)
{
    const char *end = memchr(hdr->format, 0, sizeof(hdr->format));
    if (end == NULL) {
        return 0;
    }
    for (const char *c = hdr->format; c < end; c++) {
        if (*c < 0x21 || *c > 0x7e) {
            return 0;
        }
    }
    return 1;
}

/* Check every immutable header field against the file's real size. */
static int
header_validate(const stx_header *hdr, uint64_t file_size, const char *name)
{
    if (atomic_load(&hdr->magic) != STX_MAGIC) {
        return stx_fail(STX_ECORRUPT, "'%s' is not a shmtxn segment, or "
                        "its header is corrupt (bad magic)", name);
    }
    /* A plausible other version is another release's segment; anything
     * else, or a checksum mismatch, is damage. */
    int plausible = hdr->version > 0 && hdr->version < 1000;
    if (hdr->version != STX_FORMAT_VERSION && plausible) {
        return stx_fail(STX_EINCOMPAT, "segment '%s' has format version %u;"
                        " this shmtxn reads version %u", name, hdr->version,
                        STX_FORMAT_VERSION);
    }
    if (hdr->version != STX_FORMAT_VERSION
        || hdr->checksum != header_checksum(hdr)) {
        return stx_fail(STX_ECORRUPT, "segment '%s' is corrupt: its header"
                        " checksum does not match", name);
    }
    if (hdr->abi != stx_abi_word()) {
        return stx_fail(STX_EINCOMPAT, "segment '%s' was made on a machine "
                        "with another ABI (%#x, here %#x)", name, hdr->abi,
                        stx_abi_word());
    }
    if (hdr->total_size != file_size
        || hdr->header_size < sizeof(stx_header)
        || hdr->slot_size != sizeof(stx_reader_slot)
        || hdr->nslots == 0 || hdr->nslots > MAX_NSLOTS
        || hdr->data_off % STX_PAGE != 0
        || hdr->slots_off % STX_CACHE_LINE != 0 || hdr->undo_off % 8 != 0
        || hdr->undo_size % 8 != 0 || hdr->ndim > STX_MAX_NDIM
        || (hdr->layout_kind != STX_LAYOUT_SLOTS
            && hdr->layout_kind != STX_LAYOUT_DICT)
        || hdr->itemsize == 0 || hdr->data_size % hdr->itemsize != 0
        || !format_plausible(hdr)) {
        return stx_fail(STX_ECORRUPT, "segment '%s' is corrupt: its header"
                        " geometry is impossible", name);
    }
    if (!shape_matches(hdr)) {
        return stx_fail(STX_ECORRUPT, "segment '%s' is corrupt: its shape "
                        "does not match its %llu data bytes", name,
                        (unsigned long long)hdr->data_size);
    }
    int rc = check_regions(hdr, file_size, name);
    if (rc == 0 && !stx_mutex_plausible(&hdr->writer_mutex)) {
        rc = stx_fail(STX_ECORRUPT, "segment '%s' is corrupt: its writer "
                      "mutex is not a robust process-shared mutex", name);
    }
    return rc;
}

/* The current size of the segment's file. */
static int
file_size_of(stx_segment *seg, uint64_t *size)
{
    struct stat st;
    if (fstat(seg->file->fd, &st) != 0) {
        return fail_errno(errno, "fstat", seg->name);
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

/* The segment's magic (0 if the file is too short to hold one). */
static uint64_t
read_magic(stx_segment *seg, uint64_t size)
{
    uint64_t magic = 0;
    if (size < sizeof(stx_header)) { /* only the creator's first word */
        if (pread(seg->file->fd, &magic, sizeof(magic), 0) != sizeof(magic)) {
            return 0;
        }
        return magic;
    }
    void *p = mmap(NULL, STX_PAGE, PROT_READ, MAP_SHARED, seg->file->fd, 0);
    if (p == MAP_FAILED) {
        return 0;
    }
    magic = atomic_load_explicit(&((stx_header *)p)->magic,
                                 memory_order_acquire);
    munmap(p, STX_PAGE);
    return magic;
}

/* Is the segment past creation?  A foreign or damaged magic counts as
 * done too: validation then says what is wrong with it. */
static int
is_published(stx_segment *seg, uint64_t size)
{
    uint64_t magic = read_magic(seg, size);
    return magic != 0 && magic != STX_MAGIC_BUILDING;
}

/* 1 if the creator's init lock on byte 0 is free (so it is not building),
 * never when the creator is another thread of this process. */
static int
init_lock_free(stx_segment *seg)
{
    int fd = seg->file->fd;
    if (seg->file->creating
        || lock_byte(fd, F_RDLCK, INIT_LOCK_BYTE, F_SETLK) != 0) {
        return 0;
    }
    lock_byte(fd, F_UNLCK, INIT_LOCK_BYTE, F_SETLK);
    return 1;
}

/* Wait until the creator has published the header, or report that it died
 * mid-creation (the init lock is free but nothing was published). */
static int
wait_for_creator(stx_segment *seg, uint64_t timeout_ns)
{
    uint64_t start = now_ns(CLOCK_MONOTONIC);
    for (;;) {
        uint64_t size;
        int rc = file_size_of(seg, &size);
        if (rc != 0 || is_published(seg, size)) {
            return rc;
        }
        /* fcntl locks never conflict within one process: when another of
         * our threads is the creator, only the magic can tell. */
        int free_now = init_lock_free(seg);
        if (free_now) {
            rc = file_size_of(seg, &size);
            if (rc != 0 || is_published(seg, size)) {
                return rc;
            }
        }
        uint64_t waited = now_ns(CLOCK_MONOTONIC) - start;
        if (free_now && (size > 0 || waited > CREATOR_GRACE_NS)) {
            return stx_fail(STX_ECORRUPT, "segment '%s' was never "
                            "finished: its creator died mid-creation, or "
                            "another program made it", seg->name);
        }
        if (waited > timeout_ns) {
            return stx_fail(STX_EAGAIN, "segment '%s' is still being "
                            "created by another process", seg->name);
        }
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }
}

/* Map the segment once, validate its header, protect, claim a slot.
 * With `require_published`, return 1 (nothing kept) if the magic is not
 * yet the final one, so the caller can wait for the creator. */
static int
attach_mapped(stx_segment *seg, int require_published)
{
    uint64_t size;
    int rc = file_size_of(seg, &size);
    if (rc != 0) {
        return rc;
    }
    if (size < STX_PAGE) {
        return require_published ? 1 : stx_fail(
            STX_ECORRUPT, "'%s' is not a shmtxn segment (only %llu bytes)",
            seg->name, (unsigned long long)size);
    }
    uint8_t *base = reuse_mapping(seg, size);
    int fresh = base == NULL;
    if (fresh) {
        rc = map_file(seg, (size_t)size, &base);
        if (rc != 0) {
            return rc;
        }
    }
    seg->base = base;
    seg->map_size = (size_t)size;
    uint64_t magic = atomic_load_explicit(&((stx_header *)base)->magic,
                                          memory_order_acquire);
    if (require_published && magic != STX_MAGIC) {
        rc = 1; /* not yet (or not ours): wait for the creator first */
    }
    else {
        rc = header_validate((stx_header *)base, size, seg->name);
    }
    if (rc == 0) {
        fill_handle(seg, base, (size_t)size);
        rc = check_pid_ns(seg);
    }
    if (rc == 0) {
        rc = fresh ? protect_data(seg) : 0;
    }
    if (rc == 0 && fresh) {
        share_mapping(seg);
    }
    if (rc == 0) {
        rc = stx_slot_ensure(seg);
    }
    if (rc != 0) {
        unmap_handle(seg);
    }
    return rc;
}

int
stx_attach(stx_segment *seg, const char *name, int read_only, int populate,
           uint64_t timeout_ns)
{
    memset(seg, 0, sizeof(*seg));
    int rc = stx_check_name(name);
    if (rc != 0) {
        return rc;
    }
    snprintf(seg->name, sizeof(seg->name), "%s", name);
    seg->read_only = read_only;
    seg->populate = populate;
    rc = open_shared_fd(name, &seg->file);
    if (rc != 0) {
        return rc;
    }
    stx_crash_point("attach:after_open");
    rc = attach_mapped(seg, 1); /* the common case: published long ago */
    if (rc == 1) {
        rc = wait_for_creator(seg, timeout_ns);
        if (rc == 0) {
            rc = attach_mapped(seg, 0);
        }
    }
    if (rc != 0) {
        release_file(seg->file);
        seg->file = NULL;
    }
    return rc;
}

/* Classify a segment whose header is not (yet) valid. */
static int
probe_unready(stx_segment *seg, uint64_t size)
{
    uint64_t magic = read_magic(seg, size);
    if (magic == STX_MAGIC_BUILDING) {
        return init_lock_free(seg) ? STX_PROBE_ABANDONED : STX_PROBE_BUILDING;
    }
    if (magic != STX_MAGIC) {
        stx_fail(STX_ECORRUPT, "'%s' is not a shmtxn segment", seg->name);
        return STX_PROBE_FOREIGN;
    }
    return -1;
}

int
stx_probe(stx_segment *seg, const char *name, int *state)
{
    memset(seg, 0, sizeof(*seg));
    int rc = stx_check_name(name);
    if (rc == 0) {
        snprintf(seg->name, sizeof(seg->name), "%s", name);
        seg->read_only = 1;
        rc = open_shared_fd(name, &seg->file);
    }
    uint64_t size = 0;
    if (rc == 0) {
        rc = file_size_of(seg, &size);
    }
    if (rc != 0) {
        if (seg->file != NULL) {
            release_file(seg->file);
            seg->file = NULL;
        }
        return rc;
    }
    *state = probe_unready(seg, size);
    if (*state < 0) {
        void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, seg->file->fd, 0);
        rc = p == MAP_FAILED ? fail_errno(errno, "mmap", name)
                             : header_validate(p, size, name);
        *state = rc == 0 ? STX_PROBE_READY
                 : rc == STX_EINCOMPAT ? STX_PROBE_INCOMPAT
                                       : STX_PROBE_CORRUPT;
        if (rc == 0) {
            fill_handle(seg, p, (size_t)size);
            return 0;
        }
        if (p != MAP_FAILED) {
            munmap(p, size);
        }
    }
    release_file(seg->file);
    seg->file = NULL;
    return 0;
}

void
stx_close(stx_segment *seg)
{
    if (seg->file == NULL) {
        return;
    }
    if (seg->file->refs == 1) {
        stx_slot_release(seg);
    }
    unmap_handle(seg);
    release_file(seg->file);
    seg->file = NULL;
    seg->base = NULL;
    seg->hdr = NULL;
    seg->data = NULL;
}

int
stx_unlink(const char *name, dev_t dev, ino_t ino)
{
    int rc = stx_check_name(name);
    if (rc != 0) {
        return rc;
    }
    char path[sizeof(SHM_DIR) + STX_NAME_MAX + 1];
    snprintf(path, sizeof(path), SHM_DIR "%s", name);
    struct stat st;
    if (ino != 0 && stat(path, &st) == 0
        && (st.st_dev != dev || st.st_ino != ino)) {
        return stx_fail(STX_ENOENT, "'%s' now names another segment",
                        name);
    }
    char shm_name[STX_NAME_MAX + 2];
    snprintf(shm_name, sizeof(shm_name), "/%s", name);
    if (shm_unlink(shm_name) != 0) {
        return fail_errno(errno, "unlink", name);
    }
    return 0;
}

int
stx_beacon_holders(const stx_file *file, int32_t *pids, int max)
{
    int n = 0;
    off_t from = INIT_LOCK_BYTE + 1;
    while (n < max) {
        struct flock fl = {0};
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = from;
        fl.l_len = 0; /* to the end of any file */
        if (fcntl(file->fd, F_GETLK, &fl) != 0 || fl.l_type == F_UNLCK) {
            break;
        }
        pids[n++] = fl.l_pid > 0 ? fl.l_pid : (int32_t)fl.l_start;
        if (fl.l_len <= 0) {
            break; /* a lock to the end of the file: nothing after it */
        }
        from = fl.l_start + fl.l_len;
    }
    return n;
}
