/*
 * mapping.c -- this process's registry of open segment files, and the
 * mappings its handles share.
 *
 * One stx_file per segment file per process (found by device and inode):
 * every handle of the process shares its one fd, because closing any
 * other fd of the file would drop the process's classic fcntl locks --
 * its beacon (process.c) and, while creating, the init lock.  Handles of
 * one kind (read-write or read-only) share one mapping the same way, so
 * re-attaching costs no mmap.  engine.h describes stx_file's fields.
 *
 * `registry_lock` guards the list and each file's `refs`, `maps`,
 * `map_sizes` and `map_refs`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "internal.h"

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static stx_file *registry;

/* ------------------------------------------------------------------ */
/* where segments live                                                 */

static pthread_once_t dir_once = PTHREAD_ONCE_INIT;
static char shm_dir[PATH_MAX];

/* Read SHMTXN_SHM_DIR once (an empty value means the default).  A
 * relative one is made absolute against the working directory of this
 * moment, so a later chdir does not move the segments (admin.py's SHM_DIR
 * does the same, by plain joining, so both spell it alike). */
static void
read_shm_dir(void)
{
    const char *env = getenv("SHMTXN_SHM_DIR");
    const char *dir = env != NULL && env[0] != '\0' && strlen(env) < PATH_MAX
                      ? env : STX_SHM_DIR_DEFAULT;
    char cwd[PATH_MAX];
    int n = -1;
    if (dir[0] != '/' && getcwd(cwd, sizeof(cwd)) != NULL) {
        const char *sep = strcmp(cwd, "/") == 0 ? "" : "/";
        n = snprintf(shm_dir, sizeof(shm_dir), "%s%s%s", cwd, sep, dir);
    }
    if (n < 0 || (size_t)n >= sizeof(shm_dir)) {
        snprintf(shm_dir, sizeof(shm_dir), "%s", dir);
    }
    size_t len = strlen(shm_dir);
    while (len > 1 && shm_dir[len - 1] == '/') {
        shm_dir[--len] = '\0';
    }
}

const char *
stx_shm_dir(void)
{
    pthread_once(&dir_once, read_shm_dir);
    return shm_dir;
}

int
stx_segment_path(const char *name, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s/%s", stx_shm_dir(), name);
    if (n < 0 || (size_t)n >= size) {
        return stx_fail(STX_EINVAL, "the path of segment '%s' in %s is too "
                        "long", name, stx_shm_dir());
    }
    return 0;
}

int
stx_open_segment_file(const char *name, int flags, unsigned mode)
{
    char path[PATH_MAX];
    if (stx_segment_path(name, path, sizeof(path)) != 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return open(path, flags | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
}

void
stx_files_lock(void)
{
    pthread_mutex_lock(&registry_lock);
}

void
stx_files_unlock(void)
{
    pthread_mutex_unlock(&registry_lock);
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

stx_file *
stx_file_find(dev_t dev, ino_t ino)
{
    return registry_find(dev, ino);
}

int
stx_file_adopt(int fd, const char *name, stx_file **out)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return stx_fail_errno(err, "fstat", name);
    }
    stx_file *f = registry_find(st.st_dev, st.st_ino);
    if (f != NULL) {
        close(fd);                /* drops our classic locks on the file... */
        stx_take_beacon(f->fd);   /* ...so take the beacon again at once */
        f->refs++;
        *out = f;
        return 0;
    }
    f = calloc(1, sizeof(*f));
    if (f == NULL) {
        close(fd);
        return stx_fail(STX_ENOMEM, "out of memory attaching '%s'", name);
    }
    if (stx_take_beacon(fd) != 0) {
        int err = errno;
        free(f);
        close(fd);
        return stx_fail_errno(err, "taking the liveness lock", name);
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

int
stx_file_open(const char *name, stx_file **out)
{
    char path[PATH_MAX];
    int rc = stx_segment_path(name, path, sizeof(path));
    if (rc != 0) {
        return rc;
    }
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
    int fd = stx_open_segment_file(name, O_RDWR, 0);
    if (fd < 0) {
        rc = stx_fail_errno(errno, "attach", name);
        if (rc == STX_ENOENT) {
            rc = stx_fail(STX_ENOENT, "no segment named '%s'", name);
        }
    }
    else {
        rc = stx_file_adopt(fd, name, out);
    }
    pthread_mutex_unlock(&registry_lock);
    return rc;
}

/* Drop a reference (the registry lock held); the last closes the fd. */
static void
release_locked(stx_file *file)
{
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
}

void
stx_file_release(stx_file *file)
{
    pthread_mutex_lock(&registry_lock);
    release_locked(file);
    pthread_mutex_unlock(&registry_lock);
}

/* What one attempt of stx_file_attach found, besides 0 and errors. */
enum { ATTACH_BUSY = 1, ATTACH_MOVED = 2 };

/* One attempt at the attach protocol, the registry lock held throughout:
 * no other thread of ours opens or closes an fd of the file meanwhile,
 * so our fcntl locks on it are exactly the ones taken here (a classic
 * lock belongs to the process, and closing any fd of the file drops it).
 * 0 with *out; ATTACH_BUSY if byte 0 is held exclusively (nothing kept);
 * ATTACH_MOVED if the name no longer names the file we opened (nothing
 * kept); or an engine error. */
static int
attach_once(const char *name, const char *path, stx_file **out)
{
    struct stat st;
    stx_file *f = NULL;
    if (stat(path, &st) == 0) {
        f = registry_find(st.st_dev, st.st_ino);
        if (f != NULL && f->verified) {
            f->refs++; /* our beacon has been held since it was verified */
            *out = f;
            return 0;
        }
    }
    int fd = f != NULL ? f->fd : stx_open_segment_file(name, O_RDWR, 0);
    if (fd < 0) {
        int rc = stx_fail_errno(errno, "attach", name);
        return rc == STX_ENOENT
               ? stx_fail(STX_ENOENT, "no segment named '%s'", name) : rc;
    }
    if (stx_lock_byte(fd, F_RDLCK, STX_INIT_LOCK_BYTE, F_SETLK) != 0) {
        if (f == NULL) {
            close(fd); /* a file none of our handles has: no lock lost */
        }
        return ATTACH_BUSY;
    }
    int rc = 0;
    if (f != NULL) {
        f->refs++; /* a probe's: its beacon is held already */
    }
    else {
        rc = stx_file_adopt(fd, name, &f); /* takes the beacon */
        if (rc != 0) {
            return rc; /* fd closed, and with it the lock on byte 0 */
        }
    }
    int same = stat(path, &st) == 0 && st.st_dev == f->dev
               && st.st_ino == f->ino;
    stx_lock_byte(f->fd, F_UNLCK, STX_INIT_LOCK_BYTE, F_SETLK);
    if (!same) {
        release_locked(f);
        return ATTACH_MOVED;
    }
    f->verified = 1;
    *out = f;
    return 0;
}

int
stx_file_attach(const char *name, uint64_t timeout_ns, stx_file **out)
{
    char path[PATH_MAX];
    int rc = stx_segment_path(name, path, sizeof(path));
    uint64_t start = stx_now_ns(CLOCK_MONOTONIC);
    /* each ATTACH_MOVED means another process replaced the file under the
     * name meanwhile: progress, but bound it all the same */
    for (int moved = 0; rc == 0 && moved < 1000;) {
        pthread_mutex_lock(&registry_lock);
        rc = attach_once(name, path, out);
        pthread_mutex_unlock(&registry_lock);
        if (rc == ATTACH_MOVED) {
            moved++;
            rc = 0;
            continue;
        }
        if (rc != ATTACH_BUSY) {
            return rc;
        }
        if (stx_now_ns(CLOCK_MONOTONIC) - start > timeout_ns) {
            return stx_fail(STX_EAGAIN, "segment '%s' is still being "
                            "created by another process", name);
        }
        struct timespec pause = {0, 200000};
        nanosleep(&pause, NULL);
        rc = 0;
    }
    return rc != 0 ? rc : stx_fail(STX_EAGAIN, "segment '%s' was replaced "
                                   "1000 times while attaching", name);
}

void
stx_files_after_fork(void (*each)(stx_file *file))
{
    /* only the forking thread lives on: nobody else holds the lock */
    pthread_mutex_init(&registry_lock, NULL);
    for (stx_file *f = registry; f != NULL; f = f->next) {
        stx_take_beacon(f->fd);
        f->slot = -1;
        atomic_store(&f->ntxn, 0);
        each(f);
    }
}

/* ------------------------------------------------------------------ */
/* mappings                                                            */

int
stx_map_file(stx_segment *seg, size_t size, uint8_t **out)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED,
                   seg->file->fd, 0);
    if (p == MAP_FAILED) {
        return stx_fail_map(errno, size, seg->name);
    }
    *out = p;
    return 0;
}

int
stx_fail_map(int err, uint64_t size, const char *name)
{
    if (err != ENOMEM) {
        return stx_fail_errno(err, "mmap", name);
    }
    return stx_fail(STX_ENOMEM, "mapping segment '%s' needs %llu bytes of "
                    "address space, more than this process can get; create "
                    "it with a smaller size= (or raise `ulimit -v`)", name,
                    (unsigned long long)size);
}

uint64_t
stx_address_space_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) {
        return 0;
    }
    return (uint64_t)rl.rlim_cur;
}

int
stx_fail_create(int err, const char *name)
{
    const char *dir = stx_shm_dir();
    struct stat st;
    if ((err == ENOENT || err == ENOTDIR)
        && (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))) {
        return stx_fail(STX_ESYS, "cannot create segment '%s': the segment "
                        "directory %s does not exist; create it, or set "
                        "SHMTXN_SHM_DIR to a directory that does", name,
                        dir);
    }
    if ((err == EACCES || err == EPERM) && access(dir, W_OK | X_OK) != 0) {
        return stx_fail(STX_EACCES, "cannot create segment '%s': the segment "
                        "directory %s is not writable by this user", name,
                        dir);
    }
    return stx_fail_errno(err, "create", name);
}

uint64_t
stx_fs_free_bytes(int fd)
{
    struct statvfs vfs;
    if (fstatvfs(fd, &vfs) != 0) {
        return 0;
    }
    return (uint64_t)vfs.f_bavail * vfs.f_frsize;
}

int
stx_grow_backing(stx_segment *seg, uint64_t region_off, uint64_t from,
                 uint64_t *want, uint64_t exact)
{
    int fd = seg->file->fd;
    int err = posix_fallocate(fd, (off_t)(region_off + from),
                              (off_t)(*want - from));
    if ((err == ENOSPC || err == EFBIG) && *want > exact) {
        *want = exact; /* the step does not fit: just what is needed */
        err = posix_fallocate(fd, (off_t)(region_off + from),
                              (off_t)(exact - from));
    }
    return err;
}

int
stx_ensure_backed(stx_segment *seg, uint64_t region_off, uint64_t *backed,
                  uint64_t claimed, const char *what)
{
    if (claimed <= *backed) {
        *backed = claimed; /* lowered since: only this much is sure */
        return 0;
    }
    int err = posix_fallocate(seg->file->fd, (off_t)(region_off + *backed),
                              (off_t)(claimed - *backed));
    if (err == ENOSPC || err == EFBIG) {
        return stx_fail(STX_EFULL, "segment '%s' counts %llu bytes of its "
                        "%s as reserved, but %s has no room for them "
                        "(%llu bytes free)", seg->name,
                        (unsigned long long)claimed, what, stx_shm_dir(),
                        (unsigned long long)stx_fs_free_bytes(seg->file->fd));
    }
    if (err != 0) {
        return stx_fail_errno(err, "reserving pages", seg->name);
    }
    *backed = claimed;
    return 0;
}

uint64_t
stx_shm_dir_total_bytes(void)
{
    struct statvfs vfs;
    if (statvfs(stx_shm_dir(), &vfs) != 0) {
        return 0;
    }
    return (uint64_t)vfs.f_blocks * vfs.f_frsize;
}

/* Prefault [p, p+len) of a read-write mapping of backed pages:
 * MADV_POPULATE_WRITE, or on kernels before 5.14 a read of every page. */
static void
prefault(uint8_t *p, size_t len)
{
#ifdef MADV_POPULATE_WRITE
    if (madvise(p, len, MADV_POPULATE_WRITE) == 0 || errno != EINVAL) {
        return; /* done, or failed for want of pages: never touch then */
    }
#endif
    for (size_t i = 0; i < len; i += STX_PAGE) {
        (void)*(volatile uint8_t *)(p + i);
    }
}

void
stx_populate(stx_segment *seg)
{
    if (!seg->populate) {
        return;
    }
    prefault(seg->base, (size_t)seg->hdr->undo_off);
    /* only the data pages that are backed: a dict's region is mostly
     * holes it has not grown into, and prefaulting a hole would fill it */
    uint64_t start = seg->hdr->data_off;
    uint64_t end = start + stx_round_up(seg->data_size, STX_PAGE);
    while (start < end) {
        off_t data = lseek(seg->file->fd, (off_t)start, SEEK_DATA);
        if (data < 0 || (uint64_t)data >= end) {
            break; /* no more data (or no SEEK_DATA here: prefault none) */
        }
        off_t hole = lseek(seg->file->fd, data, SEEK_HOLE);
        uint64_t stop = hole < 0 || (uint64_t)hole > end ? end
                                                         : (uint64_t)hole;
        prefault(seg->base + data, (size_t)(stop - (uint64_t)data));
        start = stop;
    }
}

void
stx_share_mapping(stx_segment *seg)
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

uint8_t *
stx_reuse_mapping(stx_segment *seg, uint64_t size)
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

/* stx_unmap_handle with the registry lock held. */
static void
unmap_locked(stx_segment *seg)
{
    stx_file *f = seg->file;
    int kind = seg->read_only;
    int last = 1;
    if (seg->shared_map) {
        last = --f->map_refs[kind] == 0;
        if (last) {
            f->maps[kind] = NULL;
        }
    }
    if (last && seg->base != NULL) {
        munmap(seg->base, seg->map_size);
    }
    seg->base = NULL;
    seg->shared_map = 0;
}

void
stx_unmap_handle(stx_segment *seg)
{
    pthread_mutex_lock(&registry_lock);
    unmap_locked(seg);
    pthread_mutex_unlock(&registry_lock);
}

void
stx_file_close(stx_segment *seg, void (*last)(stx_segment *seg))
{
    pthread_mutex_lock(&registry_lock);
    if (seg->file->refs == 1 && last != NULL) {
        last(seg);
    }
    unmap_locked(seg);
    release_locked(seg->file);
    pthread_mutex_unlock(&registry_lock);
}

int
stx_protect_data(stx_segment *seg)
{
    if (!seg->read_only || seg->data_size == 0) {
        return 0;
    }
    size_t len = (size_t)stx_round_up(seg->data_size, STX_PAGE);
    if (mprotect(seg->data, len, PROT_READ) != 0) {
        return stx_fail_errno(errno, "mprotect", seg->name);
    }
    return 0;
}
