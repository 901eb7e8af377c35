/*
 * engine.c -- stx_engine_init, and the fork handler that carries every
 * floor of the engine into a forked child.  The top of the engine: it
 * calls into the files below and nothing calls into it but the caller of
 * the engine.
 */
#include <pthread.h>
#include <unistd.h>

#include "internal.h"

/* In a forked child: a new generation and pid; the parent's txns are not
 * ours; our beacons were not inherited, so take them anew and claim
 * reader slots of our own. */
static void
after_fork_in_child(void)
{
    stx_process_after_fork();
    stx_txns_after_fork();
    stx_files_after_fork(stx_slot_after_fork);
}

int
stx_engine_init(void)
{
    static int done;
    stx_self_pid = getpid();
    if (!done) {
        if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
            return stx_fail(STX_ESYS, "pthread_atfork failed");
        }
        stx_learn_mutex_kind();
        (void)stx_shm_dir(); /* SHMTXN_SHM_DIR as it is at init */
        done = 1;
    }
    return 0;
}
