/*
 * process.c -- who this process is: its pid (kept current across fork),
 * its fork generation, its pid namespace, and its liveness beacons.
 *
 * Liveness beacon: a process that has a segment open holds a classic
 * fcntl write lock on byte `pid` of the segment's file (byte 0 is the
 * creator's init lock).  The kernel drops the lock when the process dies,
 * so anyone can ask "is pid P alive and attached?" with F_GETLK, without
 * trusting anything stored in shared memory, and a reused pid never looks
 * attached.  Classic locks also vanish when *any* fd of the file closes in
 * the process, which is why each process keeps exactly one fd per segment
 * (stx_file, mapping.c).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

volatile uint64_t stx_fork_gen = 1;
volatile int32_t stx_self_pid;

int
stx_lock_byte(int fd, short type, off_t byte, int cmd)
{
    struct flock fl = {0};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    return fcntl(fd, cmd, &fl);
}

int
stx_take_beacon(int fd)
{
    return stx_lock_byte(fd, F_WRLCK, (off_t)stx_self_pid, F_SETLK);
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

int
stx_beacon_holders(const stx_file *file, int32_t *pids, int max)
{
    int n = 0;
    off_t from = STX_INIT_LOCK_BYTE + 1;
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

uint64_t
stx_own_pid_ns(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

void
stx_process_after_fork(void)
{
    stx_fork_gen++;
    stx_self_pid = getpid();
}
