/*
 * shmtxn.h -- the public C API of shmtxn (placeholder while the API is
 * written; see docs/architecture.md).
 */
#ifndef SHMTXN_H
#define SHMTXN_H
#endif
