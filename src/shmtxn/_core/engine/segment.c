/*
 * segment.c -- create, attach, probe, close and unlink segments: the
 * header, its validation, and the writer mutex's kind.
 *
 * What the data region holds is the layout's business (stx_layout,
 * engine.h): creation asks the layout it is given for its plan (default
 * undo log, bytes to reserve at once) and lets it format the region;
 * nothing here knows a particular layout.  The creation protocol is
 * described above stx_header in layout.h; beacons in process.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define MAX_NSLOTS 65536u
#define DEFAULT_NSLOTS 128u
/* How long an attacher gives a creator that has opened the name but not
 * yet taken the init lock (a window of a few instructions). */
#define CREATOR_GRACE_NS 200000000ull

/* ------------------------------------------------------------------ */
/* names and the header                                                */

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

/* ------------------------------------------------------------------ */
/* creation                                                            */

/* How a new segment's file is backed at once: its first `front` bytes
 * (header and slots) and `data` bytes from data_off.  The undo log in
 * between is reserved only as txns need it (undo.c). */
typedef struct backing {
    uint64_t front;
    uint64_t data;
} backing;

/* Lay out the regions for `opts` into `hdr` (not yet mapped memory), as
 * the layout plans them; *back: what to back with pages at once. */
static int
plan_layout(stx_header *hdr, const stx_create_opts *opts, backing *back)
{
    const stx_layout *layout = opts->layout;
    if (layout == NULL || layout->plan == NULL) {
        return stx_fail(STX_EINVAL, "no layout given for the new segment");
    }
    stx_layout_plan plan = {0};
    layout->plan(opts->data_size, &plan);
    uint32_t nslots = opts->nslots ? opts->nslots : DEFAULT_NSLOTS;
    if (nslots > MAX_NSLOTS) {
        return stx_fail(STX_EINVAL, "max_processes is at most %u",
                        MAX_NSLOTS);
    }
    if (opts->data_size > (1ull << 46) || opts->undo_size > (1ull << 46)) {
        return stx_fail(STX_EFULL, "asked for %llu data bytes and %llu undo"
                        " bytes: more than any machine has",
                        (unsigned long long)opts->data_size,
                        (unsigned long long)opts->undo_size);
    }
    /* a cap of N bytes holds a record of N old bytes: its header and
     * trailer are on us (one page) */
    uint64_t undo = opts->undo_size
                    ? stx_round_up(opts->undo_size, STX_PAGE) + STX_PAGE
                    : stx_round_up(plan.undo_size, STX_PAGE);
    hdr->header_size = (uint32_t)stx_round_up(sizeof(stx_header), STX_PAGE);
    hdr->slots_off = hdr->header_size;
    hdr->nslots = nslots;
    hdr->slot_size = sizeof(stx_reader_slot);
    hdr->undo_off = stx_round_up(hdr->slots_off
                                 + (uint64_t)nslots * sizeof(stx_reader_slot),
                                 STX_PAGE);
    hdr->undo_size = undo;
    hdr->data_off = hdr->undo_off + undo;
    hdr->data_size = opts->data_size;
    hdr->layout_kind = layout->kind;
    hdr->total_size = stx_round_up(hdr->data_off + opts->data_size, STX_PAGE);
    back->front = hdr->undo_off;
    back->data = plan.data_reserve >= opts->data_size
                 ? hdr->total_size - hdr->data_off : plan.data_reserve;
    return 0;
}

/* Refuse up front what the segment directory cannot hold, so a full
 * tmpfs is a clear error now and never a SIGBUS later. */
static int
check_free_space(int fd, uint64_t needed, const char *name)
{
    uint64_t free_bytes = stx_fs_free_bytes(fd);
    if (free_bytes != 0 && needed > free_bytes) { /* 0: cannot tell; let
                                                      posix_fallocate say */
        return stx_fail(STX_EFULL, "segment '%s' needs %llu bytes but %s "
                        "has %llu free", name, (unsigned long long)needed,
                        stx_shm_dir(), (unsigned long long)free_bytes);
    }
    return 0;
}

/* posix_fallocate [off, +len) of `fd`, as an engine error. */
static int
fallocate_range(int fd, uint64_t off, uint64_t len, uint64_t needed,
                const char *name)
{
    int err = len ? posix_fallocate(fd, (off_t)off, (off_t)len) : 0;
    if (err == ENOSPC || err == EFBIG) {
        return stx_fail(STX_EFULL, "segment '%s' needs %llu bytes but %s "
                        "ran out of space", name,
                        (unsigned long long)needed, stx_shm_dir());
    }
    if (err != 0) {
        return stx_fail_errno(err, "reserving space", name);
    }
    return 0;
}

/* Size the file to `total` bytes and back what `back` says with real
 * pages now (posix_fallocate): nothing there can SIGBUS later.  The rest
 * are holes: the undo log (reserved by txns as they need it) and, for a
 * dict, the heap past its first pages (reserved as it grows). */
static int
reserve_space(int fd, const stx_header *plan, const backing *back,
              const char *name)
{
    uint64_t needed = back->front + back->data;
    int rc = check_free_space(fd, needed, name);
    if (rc != 0) {
        return rc;
    }
    if (ftruncate(fd, (off_t)plan->total_size) != 0) {
        return stx_fail_errno(errno, "sizing", name);
    }
    rc = fallocate_range(fd, 0, back->front, needed, name);
    if (rc == 0) {
        rc = fallocate_range(fd, plan->data_off, back->data, needed, name);
    }
    return rc;
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

/* Liveness (beacons keyed by pid, kill() on thread ids) only means
 * something among processes that see the same pids: refuse to attach
 * from another pid namespace (a container that shares /dev/shm but not
 * its pid namespace) rather than misjudge who is alive. */
static int
check_pid_ns(const stx_segment *seg)
{
    uint64_t theirs = seg->hdr->pid_ns, ours = stx_own_pid_ns();
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
    snprintf(hdr->format, sizeof(hdr->format), "%s",
             opts->format ? opts->format : "");
    hdr->itemsize = opts->itemsize;
    hdr->ndim = opts->ndim;
    for (uint32_t i = 0; i < opts->ndim && i < STX_MAX_NDIM; i++) {
        hdr->shape[i] = opts->shape[i];
    }
    if (getrandom(hdr->hash_key, sizeof(hdr->hash_key), 0)
        != (ssize_t)sizeof(hdr->hash_key)) {
        uint64_t t = stx_now_ns(CLOCK_MONOTONIC)
                     ^ ((uint64_t)stx_self_pid << 32);
        hdr->hash_key[0] = t * 0x9e3779b97f4a7c15ull;
        hdr->hash_key[1] = (t ^ (uintptr_t)hdr) * 0xc2b2ae3d27d4eb4full;
    }
    hdr->creator_pid = stx_self_pid;
    hdr->pid_ns = stx_own_pid_ns();
    hdr->created_ns = stx_now_ns(CLOCK_REALTIME);
    atomic_store(&hdr->modified_ns, hdr->created_ns);
}

/* Fill a fresh, zeroed header, let the layout format the data region
 * (of which the first `reserved` bytes are backed), and publish the
 * segment by storing the magic. */
static int
init_header(stx_segment *seg, const stx_create_opts *opts, uint64_t reserved)
{
    stx_header *hdr = seg->hdr;
    fill_identity(hdr, opts);
    if (opts->layout->format != NULL) {
        int rc = opts->layout->format(seg, reserved);
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
    backing back = {0};
    int rc = plan_layout(&plan, opts, &back);
    if (rc == 0) {
        rc = reserve_space(seg->file->fd, &plan, &back, seg->name);
    }
    stx_crash_point("create:after_reserve");
    uint8_t *base = NULL;
    if (rc == 0) {
        rc = stx_map_file(seg, plan.total_size, &base);
    }
    if (rc == 0) {
        /* the geometry fields lie between the magic and the format */
        memcpy(base + sizeof(plan.magic), (uint8_t *)&plan + sizeof(plan.magic),
               offsetof(stx_header, format) - sizeof(plan.magic));
        fill_handle(seg, base, plan.total_size);
        stx_populate(seg);
        stx_share_mapping(seg);
        rc = init_header(seg, opts, back.data);
        if (rc != 0) {
            stx_unmap_handle(seg);
        }
    }
    return rc;
}

/*
 * Who may reclaim a name (create over a leftover), and the attach
 * protocol that makes it safe.
 *
 * A segment is *provably unused* when nobody can be using it or come to
 * use it: either its creator died mid-creation (building magic, init lock
 * free: no attach of it can ever succeed), or it is published, its
 * creator is dead, and no process holds a liveness beacon on it.  Only
 * such a leftover is reclaimed, i.e. its name unlinked so that a create
 * can take it; anything else under the name stays, and creating is
 * STX_EEXIST saying why.  A file without our magic is never touched.
 *
 * The race to close is an attacher that opened the old file but has not
 * yet taken its beacon when a reclaimer looks: it would go on to use a
 * file nobody else will ever find.  So byte 0 (the creator's init lock)
 * also serialises attaching against reclaiming:
 *
 *   attacher (stx_file_attach): open the name; take a *shared* lock on
 *     byte 0 (poll while it is held exclusively); take the beacon; check
 *     the name still names the file it opened (else drop it and start
 *     again); release byte 0.
 *   reclaimer (reclaim_leftover): open the name; take an *exclusive* lock
 *     on byte 0 without waiting (held: someone is creating or attaching
 *     it, so it is in use); check the name still names that file; check
 *     magic, header, creator and beacons; unlink; close.
 *
 * Either the attacher's beacon exists when the reclaimer looks (it then
 * stays), or the reclaimer had unlinked before the attacher checked the
 * name (the attacher then retries on whatever the name holds now).  Two
 * reclaimers exclude each other on byte 0, and the loser finds the name
 * moved.  A creator holds byte 0 exclusively from just after its O_EXCL
 * open until it publishes, so nobody attaches or reclaims a segment
 * under construction, and it unlinks on failure before letting go of
 * byte 0.  fcntl locks belong to the process, so everything above runs
 * under this process's registry lock (mapping.c): no other thread of
 * ours opens, locks or closes the file meanwhile, and a file this
 * process already has open is never reclaimed.
 */

static int header_validate(const stx_header *hdr, uint64_t file_size,
                           const char *name);

/* Why a leftover was not reclaimed, for the STX_EEXIST message. */
#define WHY_SIZE 160

/* 1 if no process `pid` exists any more (gone, or a zombie: its locks
 * are gone with its life); 0 if it may still run (including when we
 * cannot tell, e.g. another user's process). */
static int
pid_gone(int32_t pid)
{
    if (pid <= 0) {
        return 0;
    }
    if (kill(pid, 0) != 0) {
        return errno == ESRCH;
    }
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')'); /* the name may hold ')' */
    return paren != NULL && paren[1] == ' '
           && (paren[2] == 'Z' || paren[2] == 'X');
}

/* The pid of a process holding a beacon on `fd`'s file, or 0: any lock
 * past byte 0 by another process (F_GETLK never reports our own). */
static int32_t
beacon_holder(int fd)
{
    struct flock fl = {0};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = STX_INIT_LOCK_BYTE + 1;
    fl.l_len = 0;
    if (fcntl(fd, F_GETLK, &fl) != 0) {
        return -1; /* cannot tell: in use */
    }
    return fl.l_type == F_UNLCK ? 0 : fl.l_pid > 0 ? fl.l_pid : -1;
}

/* Is the file on `fd` (of `size` bytes, byte 0 locked by us) a provably
 * unused shmtxn segment?  1 yes; 0 no, with why[] saying what keeps it.
 * With `creator_may_live` (`shmtxn gc`), a live creator that has closed
 * the segment (no beacon) does not keep it. */
static int
leftover_unused(int fd, uint64_t size, const char *name, char *why,
                int creator_may_live)
{
    uint64_t magic = 0;
    if (size < sizeof(magic)
        || pread(fd, &magic, sizeof(magic), 0) != sizeof(magic)) {
        snprintf(why, WHY_SIZE, "it is empty: a creator may have just "
                 "made it");
        return 0;
    }
    if (magic == STX_MAGIC_BUILDING) {
        return 1; /* byte 0 was free: its creator died mid-creation, and no
                     attach of it can succeed (any beacons there are
                     attachers on their way to CorruptSegmentError) */
    }
    if (magic != STX_MAGIC || size < STX_PAGE) {
        snprintf(why, WHY_SIZE, "it is not a shmtxn segment");
        return 0;
    }
    stx_header *hdr = mmap(NULL, STX_PAGE, PROT_READ, MAP_SHARED, fd, 0);
    if (hdr == MAP_FAILED) {
        snprintf(why, WHY_SIZE, "it cannot be mapped to check");
        return 0;
    }
    int ok = 0;
    int32_t creator = hdr->creator_pid, holder;
    if (header_validate(hdr, size, name) != 0) {
        snprintf(why, WHY_SIZE, "%s", stx_detail());
    }
    else if (hdr->pid_ns != 0 && hdr->pid_ns != stx_own_pid_ns()) {
        snprintf(why, WHY_SIZE, "it was created in another pid namespace");
    }
    else if (!creator_may_live && !pid_gone(creator)) {
        snprintf(why, WHY_SIZE, "its creator, process %d, is still "
                 "running", (int)creator);
    }
    else if ((holder = beacon_holder(fd)) != 0) {
        snprintf(why, WHY_SIZE, "process %d has it open", (int)holder);
    }
    else {
        ok = 1;
    }
    munmap(hdr, STX_PAGE);
    return ok;
}

/* Unlink the leftover under `name` if it is provably unused (above;
 * `creator_may_live` as in leftover_unused).  Called with the registry
 * lock held.  1: the name is free now (reclaimed, or gone meanwhile); 0:
 * it stays, why[] says why. */
static int
reclaim_leftover(const char *name, const char *path, char *why,
                 int creator_may_live)
{
    struct stat st, now;
    if (stat(path, &st) != 0) {
        return errno == ENOENT;
    }
    if (stx_file_find(st.st_dev, st.st_ino) != NULL) {
        snprintf(why, WHY_SIZE, "this process has it open");
        return 0; /* and must not open (and close) a second fd of it */
    }
    int fd = stx_open_segment_file(name, O_RDWR, 0);
    if (fd < 0) {
        int err = errno;
        snprintf(why, WHY_SIZE, "it cannot be opened (%s)", strerror(err));
        return err == ENOENT;
    }
    int rc = 0;
    if (fstat(fd, &st) != 0 || stx_file_find(st.st_dev, st.st_ino) != NULL) {
        /* renamed to a file of ours since the stat: keep our locks */
        stx_file *f = stx_file_find(st.st_dev, st.st_ino);
        close(fd);
        if (f != NULL) {
            stx_take_beacon(f->fd);
        }
        snprintf(why, WHY_SIZE, "this process has it open");
        return 0;
    }
    if (stx_lock_byte(fd, F_WRLCK, STX_INIT_LOCK_BYTE, F_SETLK) != 0) {
        snprintf(why, WHY_SIZE, "another process is creating or attaching "
                 "it right now");
    }
    else if (stat(path, &now) != 0 || now.st_dev != st.st_dev
             || now.st_ino != st.st_ino) {
        rc = 1; /* someone else reclaimed it: the name is for the taking */
    }
    else if (leftover_unused(fd, (uint64_t)st.st_size, name, why,
                             creator_may_live)) {
        stx_crash_point("reclaim:before_unlink");
        rc = unlink(path) == 0 || errno == ENOENT;
        if (!rc) {
            snprintf(why, WHY_SIZE, "it cannot be removed (%s)",
                     strerror(errno));
        }
    }
    close(fd); /* drops our lock on byte 0 */
    return rc;
}

/* Take the init lock on a file we just created.  Others hold byte 0 only
 * for a few system calls (an attacher's shared lock, a reclaimer's
 * check), so wait for them, but boundedly. */
static int
take_init_lock(int fd)
{
    for (int i = 0; i < 20000; i++) { /* 20000 x 100 us: 2 s */
        if (stx_lock_byte(fd, F_WRLCK, STX_INIT_LOCK_BYTE, F_SETLK) == 0) {
            return 0;
        }
        if (errno != EAGAIN && errno != EACCES) {
            return -1;
        }
        struct timespec pause = {0, 100000};
        nanosleep(&pause, NULL);
    }
    errno = EAGAIN;
    return -1;
}

/* open(O_CREAT | O_EXCL) of `name`, reclaiming a provably unused leftover
 * that holds the name.  Registry lock held.  The fd, or -1 with the
 * engine error in *rc. */
static int
open_new(const char *name, const char *path, unsigned mode, int *rc)
{
    char why[WHY_SIZE] = "";
    for (int attempt = 0; attempt < 4; attempt++) {
        int fd = stx_open_segment_file(name, O_RDWR | O_CREAT | O_EXCL,
                                       mode);
        if (fd >= 0) {
            return fd;
        }
        int err = errno;
        if (err != EEXIST) {
            *rc = stx_fail_create(err, name);
            return -1;
        }
        if (!reclaim_leftover(name, path, why, 0)) {
            break;
        }
        snprintf(why, sizeof(why), "another process took the name first");
    }
    *rc = stx_fail(STX_EEXIST, "a segment named '%s' already exists (%s)",
                   name, why);
    return -1;
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
    char path[PATH_MAX];
    rc = stx_segment_path(name, path, sizeof(path));
    if (rc != 0) {
        return rc;
    }
    unsigned mode = opts->mode ? opts->mode : 0600;
    stx_files_lock();
    int fd = open_new(name, path, mode, &rc);
    if (fd < 0) {
        stx_files_unlock();
        return rc;
    }
    /* the mode given is the mode the file gets: the umask does not
     * narrow it (fchmod on our own fd, never on the name).  On failure
     * unlink before closing: until then nobody else can have the name
     * (it holds no magic a reclaimer would take, or we hold byte 0). */
    if (fchmod(fd, mode) != 0 || take_init_lock(fd) != 0) {
        rc = stx_fail_errno(errno, "setting the mode or init lock of", name);
        unlink(path);
        close(fd);
        stx_files_unlock();
        return rc;
    }
    /* Mark the file as a shmtxn segment under construction at once, so a
     * creator killed from here on leaves an "abandoned" segment that
     * `shmtxn gc` may remove, not an anonymous file. */
    uint64_t building = STX_MAGIC_BUILDING;
    if (pwrite(fd, &building, sizeof(building), 0) != sizeof(building)) {
        rc = stx_fail_errno(errno, "create", name);
        unlink(path);
        close(fd);
        stx_files_unlock();
        return rc;
    }
    stx_crash_point("create:after_open");
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = stx_fail_errno(errno, "fstat", name);
        unlink(path);
        close(fd);
        stx_files_unlock();
        return rc;
    }
    rc = stx_file_adopt(fd, name, &seg->file);
    if (rc == 0) {
        seg->file->verified = 1; /* made by us, and byte 0 is ours */
    }
    stx_files_unlock();
    if (rc == 0) {
        seg->file->creating = 1;
        rc = build_segment(seg, opts);
        seg->file->creating = 0;
        if (rc != 0) {
            unlink(path); /* still holding byte 0: still our file */
            stx_file_release(seg->file);
            seg->file = NULL;
            return rc;
        }
        stx_lock_byte(seg->file->fd, F_UNLCK, STX_INIT_LOCK_BYTE, F_SETLK);
        rc = stx_slot_ensure(seg);
        if (rc != 0) {
            stx_unlink(name, seg->file->dev, seg->file->ino);
            stx_close(seg);
        }
    }
    else {
        stx_unlink(name, st.st_dev, st.st_ino); /* adopt closed the fd */
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

/* 1 if the items of the shape, shape[0] * ... * shape[ndim-1] *
 * itemsize bytes (computed without overflow), fill data_size but for a
 * tail shorter than one item (a segment created with a size that is no
 * multiple of its item: SharedMemory(create=True, size=10) holds one
 * 8-byte item and 10 bytes).  ndim 0: no shape, as for a dict. */
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
    return bytes <= hdr->data_size && hdr->data_size - bytes < hdr->itemsize;
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
void
stx_learn_mutex_kind(void)
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
        || hdr->slots_off % STX_CACHE_LINE != 0
        || hdr->undo_off % STX_PAGE != 0 || hdr->undo_size % STX_PAGE != 0
        || hdr->ndim > STX_MAX_NDIM
        || hdr->layout_kind < STX_LAYOUT_SLOTS
        || hdr->layout_kind > STX_LAYOUT_LAST
        || hdr->itemsize == 0 || !format_plausible(hdr)) {
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
        return stx_fail_errno(errno, "fstat", seg->name);
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
        || stx_lock_byte(fd, F_RDLCK, STX_INIT_LOCK_BYTE, F_SETLK) != 0) {
        return 0;
    }
    stx_lock_byte(fd, F_UNLCK, STX_INIT_LOCK_BYTE, F_SETLK);
    return 1;
}

/* Wait until the creator has published the header, or report that it died
 * mid-creation (the init lock is free but nothing was published). */
static int
wait_for_creator(stx_segment *seg, uint64_t timeout_ns, int *abandoned)
{
    uint64_t start = stx_now_ns(CLOCK_MONOTONIC);
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
        uint64_t waited = stx_now_ns(CLOCK_MONOTONIC) - start;
        if (free_now && (size > 0 || waited > CREATOR_GRACE_NS)) {
            *abandoned = size >= sizeof(uint64_t)
                         && read_magic(seg, size) == STX_MAGIC_BUILDING;
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
    uint8_t *base = stx_reuse_mapping(seg, size);
    int fresh = base == NULL;
    if (fresh) {
        rc = stx_map_file(seg, (size_t)size, &base);
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
    if (rc == 0 && fresh) {
        stx_populate(seg);
        rc = stx_protect_data(seg);
    }
    if (rc == 0 && fresh) {
        stx_share_mapping(seg);
    }
    if (rc == 0) {
        rc = stx_slot_ensure(seg);
    }
    if (rc != 0) {
        stx_unmap_handle(seg);
    }
    return rc;
}

/* stx_attach; *abandoned set if the segment's creator died mid-creation
 * (stx_open_or_create then reclaims it). */
static int
attach(stx_segment *seg, const char *name, int read_only, int populate,
       uint64_t timeout_ns, int *abandoned)
{
    memset(seg, 0, sizeof(*seg));
    *abandoned = 0;
    int rc = stx_check_name(name);
    if (rc != 0) {
        return rc;
    }
    snprintf(seg->name, sizeof(seg->name), "%s", name);
    seg->read_only = read_only;
    seg->populate = populate;
    uint64_t start = stx_now_ns(CLOCK_MONOTONIC);
    rc = stx_file_attach(name, timeout_ns, &seg->file);
    if (rc != 0) {
        return rc;
    }
    stx_crash_point("attach:after_open");
    rc = attach_mapped(seg, 1); /* the common case: published long ago */
    if (rc == 1) {
        uint64_t spent = stx_now_ns(CLOCK_MONOTONIC) - start;
        rc = wait_for_creator(seg, spent < timeout_ns ? timeout_ns - spent
                                                      : 0, abandoned);
        if (rc == 0) {
            rc = attach_mapped(seg, 0);
        }
    }
    if (rc != 0) {
        stx_file_release(seg->file);
        seg->file = NULL;
    }
    return rc;
}

int
stx_attach(stx_segment *seg, const char *name, int read_only, int populate,
           uint64_t timeout_ns)
{
    int abandoned;
    return attach(seg, name, read_only, populate, timeout_ns, &abandoned);
}

/* Rounds of create-then-attach before stx_open_or_create gives up: each
 * failed round means another process created or removed the name, or a
 * dead creator's leftover is being cleared, in between. */
#define OPEN_ROUNDS 200

/*
 * Open-or-create: try to create (O_EXCL, reclaiming a provably unused
 * leftover); if the name is taken, attach; if it vanished before we
 * could attach (its owner removed it), or its creator turns out to have
 * died mid-creation, start again.  Creating first is what lets a
 * leftover from a crashed run be reclaimed rather than attached to.
 * Exactly one process creates any given file, so of processes racing on
 * a fresh name exactly one gets *created = 1 and all end on its file.
 */
int
stx_open_or_create(stx_segment *seg, const char *name,
                   const stx_create_opts *opts, uint64_t timeout_ns,
                   int *created)
{
    *created = 0;
    for (int round = 0; round < OPEN_ROUNDS; round++) {
        int rc = stx_create(seg, name, opts);
        if (rc != STX_EEXIST) {
            *created = rc == 0;
            return rc;
        }
        int abandoned;
        rc = attach(seg, name, 0, opts->populate, timeout_ns, &abandoned);
        if (rc != STX_ENOENT && !abandoned) {
            return rc;
        }
        if (abandoned && round > 0) {
            /* someone else's attach to it may be holding it a moment */
            struct timespec pause = {0, 200000};
            nanosleep(&pause, NULL);
        }
    }
    return stx_fail(STX_EAGAIN, "segment '%s' kept being created and "
                    "removed by other processes: gave up after %d tries",
                    name, OPEN_ROUNDS);
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
        rc = stx_file_open(name, &seg->file);
    }
    uint64_t size = 0;
    if (rc == 0) {
        rc = file_size_of(seg, &size);
    }
    if (rc != 0) {
        if (seg->file != NULL) {
            stx_file_release(seg->file);
            seg->file = NULL;
        }
        return rc;
    }
    *state = probe_unready(seg, size);
    if (*state < 0) {
        void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, seg->file->fd, 0);
        rc = p == MAP_FAILED ? stx_fail_map(errno, size, name)
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
    stx_file_release(seg->file);
    seg->file = NULL;
    return 0;
}

void
stx_close(stx_segment *seg)
{
    if (seg->file == NULL) {
        return;
    }
    /* the last handle of the process gives its reader slot back: decided
     * and done under the registry lock, so a thread attaching a new
     * handle meanwhile either shares the slot or claims a new one */
    stx_file_close(seg, stx_slot_release);
    seg->file = NULL;
    seg->base = NULL;
    seg->hdr = NULL;
    seg->data = NULL;
}

int
stx_reclaim(const char *name, int creator_may_live)
{
    int rc = stx_check_name(name);
    char path[PATH_MAX], why[WHY_SIZE] = "";
    if (rc == 0) {
        rc = stx_segment_path(name, path, sizeof(path));
    }
    if (rc != 0) {
        return rc;
    }
    stx_files_lock();
    int gone = reclaim_leftover(name, path, why, creator_may_live);
    stx_files_unlock();
    return gone ? 0 : stx_fail(STX_EEXIST, "segment '%s' stays: %s", name,
                               why);
}

int
stx_unlink(const char *name, dev_t dev, ino_t ino)
{
    int rc = stx_check_name(name);
    char path[PATH_MAX];
    if (rc == 0) {
        rc = stx_segment_path(name, path, sizeof(path));
    }
    if (rc != 0) {
        return rc;
    }
    struct stat st;
    if (ino != 0 && stat(path, &st) == 0
        && (st.st_dev != dev || st.st_ino != ino)) {
        return stx_fail(STX_ENOENT, "'%s' now names another segment",
                        name);
    }
    if (unlink(path) != 0) {
        return stx_fail_errno(errno, "unlink", name);
    }
    return 0;
}
