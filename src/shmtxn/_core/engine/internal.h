/*
 * internal.h -- what the engine's own files share and nothing above the
 * engine needs: small helpers, and the functions by which the lower files
 * serve the upper ones (the binding includes engine.h, never this).
 *
 * The engine's files call downward only: each calls only files above it
 * in this list (tests/test_layers.py checks that the graph has no cycle):
 *
 *   errors.c    error details, fail_errno, crash points
 *   items.c     the item formats of slots segments
 *   process.c   pid, fork generation, pid namespace, liveness beacons
 *   mapping.c   the per-process file registry and shared mappings
 *   readers.c   the reader slot table
 *   segment.c   create, attach, probe, close, unlink; header validation
 *   slots.c     the slots layout
 *   undo.c      the undo log; reads and writes of the data region
 *   lock.c      txns: writer mutex, readers meeting writers, recovery
 *   wait.c      waiting for a change (a futex on the commit counter)
 *   engine.c    stx_engine_init and the fork handler
 *   dict/       the dict layout (dict/dict.h), on undo.c
 *   api.c       the public C API (include/shmtxn.h), over all of these
 */
#ifndef STX_INTERNAL_H
#define STX_INTERNAL_H

#include <time.h>

#include "engine.h"

/* Where segments live by default: on Linux a POSIX shm object `/x` is
 * the file /dev/shm/x (shm_open is open() there).  SHMTXN_SHM_DIR names
 * another directory (tests use a small private tmpfs). */
#define STX_SHM_DIR_DEFAULT "/dev/shm"
/* fcntl lock byte 0 of a segment's file is the creator's init lock;
 * byte `pid` is the liveness beacon of process `pid`. */
#define STX_INIT_LOCK_BYTE 0

/* Nanoseconds on `clock`. */
static inline uint64_t
stx_now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* `value` rounded up to a multiple of `to`. */
static inline uint64_t
stx_round_up(uint64_t value, uint64_t to)
{
    return (value + to - 1) / to * to;
}

/* --- errors.c --- */

/* Map an errno from the OS to an engine code, recording what failed
 * (`what` of segment `name`). */
int stx_fail_errno(int err, const char *what, const char *name);

/* --- process.c --- */

/* fcntl lock command `cmd` of `type` on the one byte at `byte` of `fd`. */
int stx_lock_byte(int fd, short type, off_t byte, int cmd);
/* Hold this process's liveness beacon on `fd` (byte stx_self_pid). */
int stx_take_beacon(int fd);
/* This process's pid namespace: the inode of /proc/self/ns/pid (0 if
 * /proc is not there to tell). */
uint64_t stx_own_pid_ns(void);
/* In a forked child, first thing: a new fork generation and our pid. */
void stx_process_after_fork(void);

/* --- mapping.c --- */

/* Free bytes (for unprivileged users) of the file system holding `fd`;
 * 0 if it cannot tell. */
uint64_t stx_fs_free_bytes(int fd);
/* Total bytes of the file system holding the segment directory; 0 if it
 * cannot tell. */
uint64_t stx_shm_dir_total_bytes(void);
/* Grow the pages backing a region of the file at `region_off` from
 * `from` bytes to *want, or -- when that much does not fit the file
 * system and *want > `exact` -- to `exact` only (then *want = exact).
 * Returns 0 or posix_fallocate's errno. */
int stx_grow_backing(stx_segment *seg, uint64_t region_off, uint64_t from,
                     uint64_t *want, uint64_t exact);
/* Make sure the first `claimed` bytes of the region at file offset
 * `region_off` are backed by pages before they are written or read, not
 * only because a counter in shared memory says so: `*backed` is this
 * process's own mark (lowered when the claim is lower; a claim above it
 * is backed with posix_fallocate, which costs nothing for pages that
 * exist).  A lying counter thus never leads to a SIGBUS; STX_EFULL if the
 * file system has no room for what it claims.  Caller holds the writer
 * mutex. */
int stx_ensure_backed(stx_segment *seg, uint64_t region_off,
                      uint64_t *backed, uint64_t claimed, const char *what);
/* Open the file of segment `name` (a checked name) with open(2) `flags`
 * (O_NOFOLLOW and O_CLOEXEC added) and `mode`; -1 and errno on failure. */
int stx_open_segment_file(const char *name, int flags, unsigned mode);
/* The path of segment `name` in stx_shm_dir(), into `buf` of `size`
 * bytes; STX_EINVAL if it does not fit. */
int stx_segment_path(const char *name, char *buf, size_t size);
/* Take and drop the registry lock.  Creation holds it from opening the
 * name until stx_file_adopt, so no other thread of the process opens (and
 * closes) a second fd of the file meanwhile: that would drop our locks. */
void stx_files_lock(void);
void stx_files_unlock(void);
/* Register a freshly opened fd (caller holds the registry lock): take its
 * beacon, or, if this process already has the file open, reuse that fd
 * and close this one.  On failure the fd is closed. */
int stx_file_adopt(int fd, const char *name, stx_file **out);
/* Open the segment `name`, reusing this process's fd when it has one:
 * opening and closing a second fd would drop the beacon.  For looking
 * only (stx_probe): the file is not `verified`. */
int stx_file_open(const char *name, stx_file **out);
/* Open the segment `name` to use it: as stx_file_open, but following the
 * attach protocol (segment.c, "Who may reclaim"): the beacon is taken
 * under a shared lock on byte 0, and the name must still name the file
 * then.  Waits at most `timeout_ns` while another process holds byte 0
 * exclusively (a creator building, a reclaimer checking): STX_EAGAIN. */
int stx_file_attach(const char *name, uint64_t timeout_ns, stx_file **out);
/* This process's stx_file of the file (dev, ino), or NULL; the caller
 * holds the registry lock. */
stx_file *stx_file_find(dev_t dev, ino_t ino);
/* Drop one handle's reference; the last closes the fd (and with it the
 * beacon). */
void stx_file_release(stx_file *file);
/* In a forked child: re-take the beacon of every file this process has
 * open under our new pid, forget the parent's slot and txn count, and
 * call `each` on the file (readers.c claims a slot there). */
void stx_files_after_fork(void (*each)(stx_file *file));
/* Set the detail for open(2) failing with `err` while creating segment
 * `name`: a missing segment directory (STX_ESYS) or an unwritable one
 * (STX_EACCES) is named as such; anything else as stx_fail_errno. */
int stx_fail_create(int err, const char *name);
/* Set the detail for mmap(2) of `size` bytes of segment `name` failing
 * with `err`: for ENOMEM (address space, e.g. `ulimit -v`) the bytes
 * asked for and that a smaller size= helps. */
int stx_fail_map(int err, uint64_t size, const char *name);
/* This process's address space limit (RLIMIT_AS) in bytes; 0 if none. */
uint64_t stx_address_space_limit(void);
/* Map the first `size` bytes of the segment read-write (nothing is
 * prefaulted: the undo log's holes must stay holes). */
int stx_map_file(stx_segment *seg, size_t size, uint8_t **out);
/* For a handle opened with `populate`: prefault its header, slots and
 * data pages (never the undo log's, which would allocate its holes). */
void stx_populate(stx_segment *seg);
/* Make the handle's fresh mapping the one its process's handles of the
 * same kind share (if there is none yet). */
void stx_share_mapping(stx_segment *seg);
/* The shared mapping of the handle's kind and `size`, with a reference
 * taken, or NULL. */
uint8_t *stx_reuse_mapping(stx_segment *seg, uint64_t size);
/* Drop this handle's mapping: unmap it unless other handles share it. */
void stx_unmap_handle(stx_segment *seg);
/* Close a handle's share of its file, the registry lock held throughout
 * so no other thread opens or closes a handle on the file meanwhile:
 * `last` runs first (still mapped) if this is the process's last handle
 * on it, then the unmap, then the file reference goes. */
void stx_file_close(stx_segment *seg, void (*last)(stx_segment *seg));
/* Read-only handles see the data region as PROT_READ. */
int stx_protect_data(stx_segment *seg);

/* --- readers.c --- */

/* In a forked child: claim a reader slot for this process in the file's
 * shared mapping, so a child that only reads lock-free is still listed
 * as attached.  Touches only shared memory. */
void stx_slot_after_fork(stx_file *file);

/* --- segment.c --- */

/* Learn the kind word this libc gives our robust, shared mutex (once, at
 * stx_engine_init). */
void stx_learn_mutex_kind(void);

#endif /* STX_INTERNAL_H */
