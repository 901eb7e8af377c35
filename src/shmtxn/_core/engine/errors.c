/*
 * errors.c -- this thread's error detail, the errno-to-code map, and the
 * crash points the tests kill a process at.
 *
 * Every engine function that can fail returns 0 or a negative STX_E* code
 * and leaves a sentence with the numbers in a per-thread buffer, which
 * stx_detail() returns (the binding puts it into the exception message).
 * This file calls nothing else of the engine.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char detail_buf[512];
/* The crash point to die at, "" for none (set once, by the binding). */
static char crash_point[64];

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

int
stx_fail_errno(int err, const char *what, const char *name)
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
